"""Other domains for multi-domain meta-learning (issue 30): each renders or reads a package's files once, on
the user's machine, into a verified cache (:mod:`.cache`), and splits its classes into disjoint parts."""
