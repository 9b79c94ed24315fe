"""Leaf helpers shared by the command line, evaluation and training: data-set folders
(:mod:`.datasets`), argument parsing (:mod:`.args`) and message formatting (:mod:`.text`).
Nothing here imports torch or another lvae subpackage."""
