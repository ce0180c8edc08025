"""`vapt summary` and the shared subcommand dispatcher."""
from __future__ import annotations

from vapt.cli import main as vapt_main
from mgpath.cli import main as mgpath_main


def test_summary_table_vapt_and_vpt(capsys):
    assert vapt_main(["summary", "vit_base_patch16_224", "--method", "vapt"]) == 0
    out = capsys.readouterr().out
    assert "grid=14x14" in out
    assert "| **without head** | 55,608 |" in out
    assert "| prompts.norms | 16,896 | 16,896 |" in out
    assert "| backbone | 0 | 85,798,656 |" in out
    assert vapt_main(["summary", "vit_base_patch16_224", "--method", "vpt", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "| **without head** | 92,160 |" in out and "| head | 7,690 | 7,690 |" in out


def test_summary_follows_image_size(capsys):
    assert vapt_main(["summary", "vit_base_patch16_384", "--method", "vapt", "--img-size", "384"]) == 0
    out = capsys.readouterr().out
    n, d, k, g = 10, 768, 2, 24
    expected = d * n + 11 * (2 * d + k * k + n * ((g - k + 1) ** 2 + 1)) + 2 * d * 8
    assert "grid=24x24" in out and f"| **without head** | {expected:,} |" in out


def test_dispatcher_help_and_unknown(capsys):
    assert vapt_main([]) == 0 and "summary" in capsys.readouterr().out
    assert vapt_main(["nope"]) == 2 and "unknown subcommand 'nope'" in capsys.readouterr().err
    assert mgpath_main(["--help"]) == 0 and "tile" in capsys.readouterr().out
    assert mgpath_main(["fitt"]) == 2
