"""Leaf helpers shared by the command line, evaluation and training: data-set folders
(:mod:`.datasets`), argument parsing (:mod:`.args`), message formatting (:mod:`.text`) and the CPU's
instruction sets (:mod:`.system`).
Nothing here imports torch or another lvae subpackage."""
