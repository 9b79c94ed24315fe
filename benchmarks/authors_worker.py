"""Subprocess side of ``benchmarks/coding.py --authors PATH``: times the authors' own ``qarv_base`` or ``qres34m``.

    PYTHONPATH=PATH python benchmarks/authors_worker.py PATH INPUT.pt OUTPUT.pt [qarv_base|qres34m]

PATH is a clone of https://github.com/duanzhiihao/lossy-vae. Its package is also called ``lvae``,
so this script never imports this repository's ``lvae``: it runs in its own interpreter with
``PYTHONPATH=PATH`` (coding.py starts it so), drops the import hook of an editable install of this
repository's ``lvae``, and checks that ``lvae`` was imported from PATH.

It speaks the line protocol of coding.py's other workers (each answer is a stdout line that
starts with TAG; anything else the authors' code prints is ignored):

1. imports their zoo of the model (``lvae.models.qarv.zoo``; ``lvae.models.qresvae.zoo`` for
   ``qres34m``) and answers ``imported <their lvae folder>``, or ``error <one line>`` and exits 2
   (a missing dependency such as timm, a folder that is not their code);
2. waits for one stdin line (``load``), then reads INPUT.pt (written by coding.py:
   ``state_dict`` of this tree's ``qarv_base`` with the fixed reference weights, ``image``
   1×3×H×W in [0, 1], ``lmb``), builds their ``qarv_base()``, loads the state dict strictly
   (their layout is this tree's, key for key), calls their ``compress_mode(True)``, warms up
   with one ``compress(image, lmb=lmb)`` and ``decompress``, writes their bytes and decoded
   image to OUTPUT.pt (coding.py's sanity check) and answers ``ready ...``;
3. then times one operation per stdin line (``encode``: ``compress(image, lmb=lmb)``,
   ``decode``: ``decompress(bytes)``) and answers the seconds; an empty line or the end of
   stdin ends it.

λ is always passed explicitly: the authors' default λ is the top of their range (2048), this
tree's is the geometric middle (181.02).

For ``qres34m`` (one network per λ) step 2 builds their ``qres34m(lmb=lmb)`` (λ only weighs their
training loss there; the state dict is this tree's member's), times ``compress(image)`` and
``decompress(<compress's list>)``, and the bytes written to OUTPUT.pt are their whole file: the
pickle their ``compress_file`` writes, ``compress``'s list followed by the image's (height, width),
with pickle's default protocol.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

from worker_protocol import answer, serve  # benchmarks/: this script's folder

#: The models this worker runs: the module of the authors' package that defines each.
ZOOS = {"qarv_base": "lvae.models.qarv.zoo", "qres34m": "lvae.models.qresvae.zoo"}


class SetupError(Exception):
    """What makes the authors' code unusable here; coding.py prints it as one line."""


def fail(text: str) -> int:
    answer("error " + " ".join(text.split()))  # one line
    return 2


def _drop_our_editable_lvae() -> None:
    """An editable install of this repository puts an import hook for ``lvae`` on sys.meta_path.
    PYTHONPATH comes first anyway; without the hook a missing ``lvae`` in PATH cannot fall back
    to ours."""
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                        or "lvae" not in getattr(f, "__module__", "")]


def import_authors(path: Path, model: str = "qarv_base"):
    import importlib

    _drop_our_editable_lvae()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import lvae  # the authors' package

        zoo = importlib.import_module(ZOOS[model])
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top and top != "lvae":
            raise SetupError(f"the authors' code needs the Python package '{top}', which is not installed here "
                             f"(pip install -e '.[bench]' in this repository installs timm, the one their {model} "
                             "needs beyond this repository's dependencies)") from e
        raise SetupError(f"{path} is not a complete clone of https://github.com/duanzhiihao/lossy-vae: {e}") from e
    except Exception as e:  # their code, any version: one readable line
        raise SetupError(f"importing the authors' {ZOOS[model]} from {path} failed: "
                         f"{type(e).__name__}: {e}") from e
    where = Path(lvae.__file__ or next(iter(lvae.__path__))).resolve()
    if path.resolve() not in where.parents:
        raise SetupError(f"'lvae' was imported from {where.parent}, not from {path}")
    if not callable(getattr(zoo, model, None)):
        raise SetupError(f"{path}: {ZOOS[model]} has no {model} (not the authors' code?)")
    return zoo, where.parent


def pickled_file(compressed: list, height: int, width: int) -> bytes:
    """The file the authors' QRes-VAE ``compress_file`` writes for ``compress``'s output ``compressed``."""
    return pickle.dumps([*compressed, (height, width)])


def build(zoo, input_file: Path, name: str = "qarv_base"):
    """Their model with this tree's weights, warmed up: (timed ops, their bytes, their decoded image, λ).

    Their bytes: for qarv_base, what their ``compress`` returns; for qres34m, their whole file (:func:`pickled_file`).
    """
    import torch

    data = torch.load(input_file, weights_only=True)
    image, lmb = data["image"], float(data["lmb"])
    model = zoo.qarv_base() if name == "qarv_base" else getattr(zoo, name)(lmb=lmb)
    ours, theirs = data["state_dict"], model.state_dict()
    missing = [k for k in theirs if k not in ours]
    unexpected = [k for k in ours if k not in theirs]
    shapes = [k for k in theirs if k in ours and tuple(theirs[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        problems = [f"{len(v)} {what} (first: {v[0]})" for v, what in
                    ((missing, "keys missing"), (unexpected, "unexpected keys"), (shapes, "shape mismatches")) if v]
        raise SetupError(f"the authors' {name} does not take this tree's state dict key for key: "
                         + "; ".join(problems))
    model.load_state_dict(ours, strict=True)
    model.eval()
    model.compress_mode(True)  # their entropy coders' tables
    if name == "qarv_base":
        bits = model.compress(image, lmb=lmb)  # warm-up, and what coding.py compares with this tree's
        ops = {"encode": lambda: model.compress(image, lmb=lmb), "decode": lambda: model.decompress(bits)}
        return ops, bits, model.decompress(bits), lmb
    compressed = model.compress(image)  # warm-up
    height, width = image.shape[2:]
    ops = {"encode": lambda: model.compress(image), "decode": lambda: model.decompress(compressed)}
    decoded = model.decompress(compressed)[:, :, :height, :width]  # as their decompress_file crops
    return ops, pickled_file(compressed, height, width), decoded, lmb


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] not in ZOOS):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    path, input_file, output_file = Path(argv[0]), Path(argv[1]), Path(argv[2])
    name = argv[3] if len(argv) == 4 else "qarv_base"
    try:
        zoo, where = import_authors(path, name)
    except SetupError as e:
        return fail(str(e))
    answer(f"imported {where}")
    if sys.stdin.readline().strip() != "load":
        return 0
    import torch

    try:
        ops, bits, decoded, lmb = build(zoo, input_file, name)
    except SetupError as e:
        return fail(str(e))
    except Exception as e:  # an incompatible version of their code: one line
        return fail(f"the authors' {name} failed to load or code the image: {type(e).__name__}: {e}")
    torch.save({"bits": torch.frombuffer(bytearray(bits), dtype=torch.uint8), "decoded": decoded.detach().cpu()},
               output_file)
    answer(f"ready {where} lambda={lmb:.6g} threads={torch.get_num_threads()} bytes={len(bits)}")
    return serve(ops)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
