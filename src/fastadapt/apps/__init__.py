"""Applications on a trained run (layer 7, beside the command line): ``fastadapt explain`` (:mod:`.explain`),
``fastadapt serve`` (:mod:`.serve`, state in SQLite: :mod:`.store`, teaching: :mod:`.teach`), exporting an
adapted task (:mod:`.export`). Safe decoding of images a person gives: :mod:`.inputs`.

The web app needs ``pip install 'fastadapt[app]'``; nothing here is imported by ``import fastadapt``.
"""
