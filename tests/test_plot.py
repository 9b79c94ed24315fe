import json

import pytest
from PIL import Image

from lvae.cli.plot import main
from lvae.eval.plot import rd_figure


def _result(name, test_set, bpp, psnr, **extra):
    return {"name": name, "test-set": test_set, "results": {"bpp": bpp, "psnr": psnr}, **extra}


def _legend(fig) -> list[str]:
    (ax,) = fig.axes
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_every_curve_is_labelled_with_the_anchors():
    ours = _result(
        "mine", "kodak", [0.5, 0.3, 1.0], [33.0, 31.0, 37.0], **{"bd-rate": {"anchor": "vtm18.0", "percent": -3.21}}
    )
    jpeg = _result("jpeg", "kodak", [0.4, 0.8, 1.6], [27.0, 30.0, 33.0])
    fig = rd_figure([ours, jpeg])
    labels = _legend(fig)
    assert labels == [
        "qarv_base (published)",
        "qres34m (published)",
        "vtm18.0 (published)",
        "mine (BD-rate -3.21 %)",
        "jpeg",
    ]
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == len(labels)
    mine = lines[labels.index("mine (BD-rate -3.21 %)")]
    assert list(mine.get_xdata()) == [0.3, 0.5, 1.0]  # drawn in rate order
    assert list(mine.get_ydata()) == [31.0, 33.0, 37.0]

    assert _legend(rd_figure([jpeg], with_anchors=False)) == ["jpeg"]


def test_repeated_names_and_several_test_sets_are_told_apart(tmp_path):
    a = tmp_path / "jpeg-a.json"
    b = tmp_path / "jpeg-b.json"
    a.write_text(json.dumps(_result("jpeg", "kodak", [0.4, 0.8], [27.0, 30.0])))
    b.write_text(json.dumps(_result("jpeg", "clic2022-test", [0.3, 0.7], [28.0, 31.0])))
    labels = _legend(rd_figure([a, b]))
    assert "jpeg [kodak]" in labels and "jpeg [clic2022-test]" in labels
    assert "vtm18.0 (published) [kodak]" in labels and "vtm18.0 (published) [clic2022-test]" in labels
    c = tmp_path / "jpeg-c.json"
    c.write_text(json.dumps(_result("jpeg", "kodak", [0.5, 0.9], [28.0, 31.0])))
    assert _legend(rd_figure([a, c], with_anchors=False)) == ["jpeg (jpeg-a)", "jpeg (jpeg-c)"]


def test_plot_command_writes_a_png(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result("jpeg", "kodak", [0.4, 0.8, 1.6], [27.0, 30.0, 33.0])))
    out = tmp_path / "plots" / "rd.png"
    assert main([str(path), "-o", str(out), "--title", "test"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 500 and im.height > 400
    assert f"plot written to {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such result file"),
        ("{not json", "is not a JSON file"),
        ('{"name": "x"}', "holds no rate–distortion curve"),
    ],
)
def test_plot_command_bad_input_gives_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    assert main([str(path), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "x.png").exists()
