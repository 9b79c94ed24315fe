"""Leaf helpers shared by the command line, evaluation and training: data-set folders
(:mod:`.datasets`) and argument parsing (:mod:`.args`). Nothing here imports torch or another
lvae subpackage."""
