"""The files shipped with the packages: YAML configs, published-number tables, class-description files.

The repository's ``configs/`` and ``data/`` folders are the one editable copy. ``vapt/_shipped/configs`` and
``vapt/_shipped/data`` are symbolic links to them, so ``importlib.resources`` sees the same files in a
checkout (editable install) and in a built wheel, where setuptools copies the linked files into the
package (``[tool.setuptools.package-data]`` in ``pyproject.toml`` says which ones).

Names
-----
A config name is its path under ``configs/`` without ``.yaml``: ``demo``, ``vtab/vapt/cifar100``,
``wsi/tcga_nsclc_16shot``. A data name is its path under ``data/``: ``vtab/published.csv``,
``prompts/tcga_nsclc.json``. Both also accept the repository-relative spelling (``configs/demo.yaml``,
``data/prompts/demo.json``), so paths written in the shipped configs keep working from any folder.
"""
from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

from vapt.cli.errors import report_error
from vapt.cli.flags import DialectParser

__all__ = ["ConfigFileError", "ResourceError", "check_yaml_file", "config_names", "configs_main", "data_file", "resolve_config", "resolve_config_args",
           "resolve_data_path", "shipped_dir"]

_KINDS = ("configs", "data")
_MARKER = {"configs": "demo.yaml", "data": "vtab/published.csv"}  # a file that tells a real folder


class ResourceError(FileNotFoundError):
    """A shipped config or data file that does not exist (the message lists the close names)."""


class ConfigFileError(ValueError):
    """A config file that is not plain YAML (a damaged file, or a tag that would build Python objects)."""


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``configs`` or ``data`` files (a real folder on disk).

    Raises
    ------
    ResourceError
        When the package was installed without its data (for example from a zip), or ``kind`` is unknown.
    """
    if kind not in _KINDS:
        raise ValueError(f"vapt.fileio.resources: kind must be one of {_KINDS}, got {kind!r}")
    root = resources.files("vapt") / "_shipped" / kind
    if isinstance(root, Path) and root.is_dir():
        return root.resolve()  # the repository folder in a checkout, the package copy in a wheel
    fallback = Path(__file__).resolve().parents[2] / kind  # a checkout whose symlinks were not kept
    if (fallback / _MARKER[kind]).is_file():
        return fallback
    raise ResourceError(f"vapt.fileio.resources: the shipped {kind}/ folder is missing from {root}; reinstall "
                        "vapt-mgpath from a wheel or a checkout (pip install .).")


def config_names(prefix: str = "") -> list[str]:
    """Sorted names of the shipped configs, optionally only those under ``prefix`` (e.g. ``"wsi/"``)."""
    root = shipped_dir("configs")
    names = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")]
    return sorted(n for n in names if n.startswith(prefix))


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _inline(value: str) -> bool:
    return "\n" in value or value.lstrip().startswith(("{", "[")) or ": " in value


def resolve_config(name_or_path: str | os.PathLike, prefixes: tuple[str, ...] = ("",),
                   lister: str = "vapt configs") -> Path:
    """An existing config file, or the shipped config of that name.

    ``name_or_path`` may be a path (returned unchanged when it exists), a run folder holding the ``config.yaml``
    that fit saved there, a shipped name (``vtab/vapt/cifar100``,
    ``demo``), a name with ``.yaml`` or the repository spelling ``configs/<name>.yaml``. ``prefixes`` are
    tried in order in front of a name (``mgpath`` passes ``("", "wsi/")`` so ``tcga_nsclc_16shot`` works).

    Raises
    ------
    ResourceError
        Neither a file nor a shipped name; the message lists close names and ``--list``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.yaml").is_file():  # a run folder: the config its fit saved there
        return path / "config.yaml"
    name = path.as_posix()
    name = name.removeprefix("configs/")
    name = name.removesuffix(".yaml")
    root = shipped_dir("configs")
    for prefix in prefixes:
        candidate = root / f"{prefix}{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ResourceError(f"config {os.fspath(name_or_path)!r} is neither a file nor a shipped config name."
                        f"{_suggest(name, config_names())} List the shipped ones with `{lister} --list`.")


def data_file(name: str) -> Path:
    """A shipped data file by name, e.g. ``data_file("vtab/published.csv")``."""
    path = shipped_dir("data") / name
    if not path.is_file():
        raise ResourceError(f"vapt.fileio.resources: no shipped data file {name!r} in {shipped_dir('data')}.")
    return path


def check_yaml_file(path: Path) -> Path:
    """``path`` when it holds plain YAML; `ConfigFileError` naming the file, line and problem otherwise.

    Read with ``yaml.safe_load``, which builds no Python objects: a ``!!python/object`` (or any other
    non-standard) tag is refused here in one line instead of deep inside the argument parser.
    """
    import yaml

    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"config {path} is not UTF-8 text ({e.reason}); pass a YAML file.") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        tag = "!!python" in problem or "python/" in problem or "tag" in problem
        hint = ("YAML tags that build Python objects are never loaded; remove the tag" if tag
                else "fix the YAML there")
        raise ConfigFileError(f"config {path}{where}: {problem}; {hint}.") from e
    return path


def resolve_data_path(path: str | os.PathLike) -> Path:
    """``path`` when it exists, else the shipped file it names (``data/prompts/demo.json`` or
    ``prompts/demo.json``); unchanged when neither exists, so the caller's own error names it."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    rel = p.as_posix()
    rel = rel.removeprefix("data/")
    try:
        shipped = shipped_dir("data") / rel
    except ResourceError:
        return p
    return shipped if shipped.is_file() else p


def resolve_config_args(argv: list[str], prefixes: tuple[str, ...] = ("",), lister: str = "vapt configs"
                        ) -> list[str]:
    """``argv`` with the value of every ``--config X`` / ``--config=X`` / ``-c X`` passed through
    :func:`resolve_config` (so a shipped name works wherever a YAML path does)."""
    def resolve(value: str) -> str:  # YAML / JSON text in place of a file stays as it is (jsonargparse reads it)
        return value if _inline(value) else str(check_yaml_file(resolve_config(value, prefixes, lister)))

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, resolve(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


_SCOPES = {"vapt": ("",), "mgpath": ("", "wsi/")}  # name prefixes each CLI tries


def configs_main(argv: list[str] | None = None, scope: str = "vapt") -> int:
    """``vapt configs --list`` (names) and ``vapt configs NAME`` (print the YAML, e.g. to copy and edit);
    ``scope="mgpath"`` lists the ``wsi/`` configs, whose names work without that prefix."""

    prog = f"{scope} configs"
    ap = DialectParser(prog=prog, description="List or print the shipped LightningCLI configs; a "
                       f"name works in place of a path, e.g. {scope} fit --config "
                       f"{'tcga_nsclc_16shot' if scope == 'mgpath' else 'vtab/vapt/cifar100'}.")
    ap.add_argument("name", nargs="?", help="print this shipped config")
    ap.add_argument("--list", action="store_true", help="list the shipped config names (the default)")
    ap.add_argument("--path", action="store_true", help="with NAME: print where the file is instead")
    args = ap.parse_args(argv)
    if args.name is None:
        wsi = config_names("wsi/")
        print("\n".join(wsi if scope == "mgpath" else [n for n in config_names() if n not in wsi]))
        return 0
    try:
        path = resolve_config(args.name, _SCOPES[scope], lister=prog)
    except ResourceError as e:
        return report_error(prog, e)
    print(path if args.path else path.read_text(), end="\n" if args.path else "")
    return 0


def mgpath_configs_main(argv: list[str] | None = None) -> int:
    """``mgpath configs``: :func:`configs_main` over the shipped WSI configs."""
    return configs_main(argv, scope="mgpath")
