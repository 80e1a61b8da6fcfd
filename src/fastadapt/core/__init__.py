"""The bottom of the package: typed episodes (:mod:`.episodes`), the contract every algorithm, model,
task source and predictor keeps (:mod:`.contract`), the registries of named components
(:mod:`.registry`) and the errors a user can cause (:mod:`.errors`). Nothing here imports the rest."""
