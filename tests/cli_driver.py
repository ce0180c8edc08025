"""Many command-line cases in one interpreter: the bad-input matrices run through here.

``python tests/cli_driver.py CASES.json`` runs each case ``{"name", "prog": "vapt"|"mgpath", "argv", "cwd",
"env", "digest": [folders], "patch": "enospc"|None}`` by calling the tool's ``main(argv)`` as
``python -m <prog>.cli`` would, with file descriptors 1 and 2 sent to files (so that anything writing to them
is caught), and prints one ``RESULT {json}`` line: per case the exit code, stdout, stderr and the SHA-256 of
every file under the ``digest`` folders afterwards (and the seconds it took). Starting the interpreter and importing torch, Lightning
and the tools once instead of once per case is what makes the matrices fast; the cases that need a process
boundary of their own (``--debug`` tracebacks, environment variables read at import) start their own.

``run_cases(cases)`` runs the driver from a test and returns that dict.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digest(folder: str | os.PathLike) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder`` (empty when it does not exist)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _patched(kind: str | None):
    """Undo-able monkeypatches a case may ask for: ``enospc`` makes every ``torch.save`` fail as a full disk."""
    if kind != "enospc":
        return lambda: None
    import torch

    saved = torch.save
    torch.save = _enospc

    def undo():
        torch.save = saved

    return undo


def _run_case(case: dict, tmp: Path) -> dict:
    out, err = tmp / "out.txt", tmp / "err.txt"
    t0 = time.perf_counter()
    saved_fds = os.dup(1), os.dup(2)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(case.get("env") or {})
    os.chdir(case.get("cwd") or saved_cwd)
    undo = _patched(case.get("patch"))
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    try:
        module = __import__(f"{case['prog']}.cli", fromlist=["main"])
        code = module.main(list(case["argv"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 (reported as the interpreter would: traceback, exit 1)
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        undo()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return {"code": code, "seconds": round(time.perf_counter() - t0, 2), "stdout": out.read_text(errors="replace"), "stderr": err.read_text(errors="replace"),
            "digest": {d: digest(d) for d in case.get("digest") or []}}


def run_cases(cases: list[dict], env: dict | None = None, timeout: int = 600) -> dict[str, dict]:
    """Run ``cases`` in one fresh interpreter (see the module doc); ``name -> result``."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "cases.json"
        spec.write_text(json.dumps(cases))
        proc = subprocess.run([sys.executable, __file__, str(spec)], capture_output=True, text=True,
                              timeout=timeout, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
                                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"the driver failed (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def main(spec: str) -> None:
    import torch

    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in json.loads(Path(spec).read_text()):
            results[case["name"]] = _run_case(case, Path(tmp))
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
