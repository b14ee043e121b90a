"""The applications over the library: training, sampling, evaluation and the main job.

They parse flags, call the library and print; the library (everything outside this package) never
imports them. `common` holds the flag and error conventions they share.
"""
