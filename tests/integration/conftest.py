"""Integration tests against a real ComfyUI server (see README.md here).

Everything under tests/integration is marked ``integration`` and skipped, with the reason, unless ``COMFYUI_DIR``
points at a ComfyUI checkout. Then a session fixture writes tiny random models in the real on-disk formats into a
throw-away ComfyUI base directory (``comfy_models``), starts ComfyUI on a free port with the pack linked into its
``custom_nodes`` (``comfy_server``, via ``comfyui_setup.sh``; the server runs in its own venv), and stops it at the
end of the session. ``comfy`` is the per-test handle: the same client, with the server brought to a clean state
(queue empty, models unloaded, node cache reset) before the test, and the server's log lines of a failed test
attached to its report.

Environment:
    COMFYUI_DIR            ComfyUI source checkout (required)
    COMFYUI_VENV           the server's venv (default ~/.cache/comfyui-test-venv; created by comfyui_setup.sh)
    COMFYUI_SETUP          path of comfyui_setup.sh (default: shared/tools/ beside or above the repository)
    COMFYUI_REINSTALL=1    let comfyui_setup.sh check/update the venv even when it exists
    COMFYUI_FLAGS          extra main.py flags (default "--disable-api-nodes")
    COMFYUI_RUN_DIR        use this base directory instead of a pytest temp dir
    COMFYUI_KEEP_SERVER=1  leave the server (and its models) running after the session; prints how to attach
    COMFYUI_URL            attach to an already running server instead (needs COMFYUI_RUN_DIR = its base dir)
    COMFYUI_TINY_ST2V=0    skip the StreamingT2V tiny models (~420 MB of the ~480 MB written)
    COMFYUI_STARTUP_TIMEOUT  seconds to wait for the server (default 180)
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from client import ComfyClient  # noqa: E402

DEFAULT_VENV = Path.home() / ".cache" / "comfyui-test-venv"
# One torch thread in the server, as in this process (tests/conftest.py): the tiny models are as fast, a loaded
# 2-core machine does not stall a step for seconds (Cancel within one step stays within 2 s), and the server's
# float sums are the same as the in-process references'.
SERVER_THREADS = {"OMP_NUM_THREADS": os.environ.get("COMFYUI_SERVER_THREADS", "1"),
                  "MKL_NUM_THREADS": os.environ.get("COMFYUI_SERVER_THREADS", "1")}
SKIP_REASON = ("COMFYUI_DIR is not set: the integration tests need a ComfyUI checkout "
               "(see tests/integration/README.md)")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------------------------ marking
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    skip = None if os.environ.get("COMFYUI_DIR") else pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)
            if skip is not None:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed integration test gets the server log written while it ran as an extra report section."""
    outcome = yield
    report = outcome.get_result()
    info = getattr(item, "_comfy_log", None)
    if info is None or not report.failed:
        return
    path, offset = info
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        text = f"(could not read {path}: {e})"
    if len(text) > 20000:
        text = "...\n" + text[-20000:]
    report.sections.append((f"ComfyUI server log ({path})", text or "(nothing logged)"))


# ----------------------------------------------------------------------------------------------------- fixtures
@dataclass
class ServerInfo:
    url: str
    run_dir: Path
    log_path: Path
    pid: int | None  # None when attached to a server this session did not start
    pack_dir: Path  # the pack as linked into RUN_DIR/custom_nodes
    pack_name: str  # its folder name there (ComfyUI's module name: custom_nodes.<pack_name>)
    comfy_dir: Path
    venv: Path | None
    started_by_us: bool
    startup_s: float = 0.0
    setup_log: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def python_module(self) -> str:
        """The ``python_module`` object_info reports for the pack's nodes."""
        return f"custom_nodes.{self.pack_name}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


_SERVER_KEY = pytest.StashKey[ServerInfo]()


def _comfy_dir() -> Path:
    raw = os.environ.get("COMFYUI_DIR")
    if not raw:
        pytest.skip(SKIP_REASON)
    path = Path(raw).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "requirements.txt").is_file():
        pytest.fail(f"COMFYUI_DIR={raw} is not a ComfyUI source checkout (no main.py / requirements.txt)",
                    pytrace=False)
    return path


def _find_setup_script() -> Path | None:
    candidates = [os.environ.get("COMFYUI_SETUP", ""), str(REPO / "shared" / "tools" / "comfyui_setup.sh"),
                  str(REPO.parent / "shared" / "tools" / "comfyui_setup.sh")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (its parent, comfyui_setup.sh, is gone and nobody reaped it yet) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _stop(pid: int, timeout: float = 20.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _start_with_script(script: Path, comfy_dir: Path, run_dir: Path, venv: Path, flags: str,
                       timeout: float) -> tuple[dict, Path]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHON", "EXTRA_PIP", "SKIP_INSTALL", "PORT", "RUN_DIR", "VENV", "COMFY_FLAGS")}
    env.update(VENV=str(venv), PORT="0", RUN_DIR=str(run_dir), COMFY_FLAGS=flags, STARTUP_TIMEOUT=str(int(timeout)),
               **SERVER_THREADS)
    if os.environ.get("COMFYUI_PYTHON"):
        env["PYTHON"] = os.environ["COMFYUI_PYTHON"]
    if (venv / "bin" / "python").exists() and not _truthy("COMFYUI_REINSTALL"):
        env["SKIP_INSTALL"] = "1"
    setup_log = run_dir / "setup.log"
    with open(setup_log, "w") as err:
        # a first install takes minutes (venv ~1.8 GB); progress goes to RUN_DIR/setup.log
        proc = subprocess.run(["bash", str(script), str(comfy_dir), str(REPO)], env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=timeout + 1800)
    values = dict(re.findall(r"^(COMFYUI_[A-Z_]+)=(.*)$", proc.stdout, flags=re.M))
    if proc.returncode != 0 or "COMFYUI_PID" not in values:
        tail = setup_log.read_text(errors="replace")[-6000:]
        pytest.fail(f"{script} failed (exit {proc.returncode}); its log {setup_log}:\n{tail}", pytrace=False)
    return values, setup_log


def _start_direct(comfy_dir: Path, run_dir: Path, venv: Path, flags: str, timeout: float) -> dict:
    """Fallback when comfyui_setup.sh is not available: the same run-dir preparation and command line, with an
    existing venv."""
    import socket
    import urllib.request

    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no comfyui_setup.sh found (set COMFYUI_SETUP) and no venv at {venv} (set COMFYUI_VENV)",
                    pytrace=False)
    for sub in ("models", "input", "output", "temp", "custom_nodes", "user/default"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    settings = run_dir / "user" / "default" / "comfy.settings.json"
    if not settings.exists():
        settings.write_text('{"Comfy.TutorialCompleted": true}\n')
    link = run_dir / "custom_nodes" / REPO.name
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
           str(run_dir), "--database-url", f"sqlite:///{run_dir}/comfyui.db", "--disable-auto-launch", *flags.split()]
    log = open(run_dir / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=comfy_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", **SERVER_THREADS))
    log.close()
    (run_dir / "server.pid").write_text(f"{proc.pid}\n")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = (run_dir / "server.log").read_text(errors="replace")[-6000:]
                pytest.fail(f"ComfyUI did not come up (exit {proc.poll()}):\n{tail}", pytrace=False)
            time.sleep(0.5)
    return {"COMFYUI_PID": str(proc.pid), "COMFYUI_URL": url, "COMFYUI_RUN_DIR": str(run_dir),
            "COMFYUI_VENV": str(venv)}


@pytest.fixture(scope="session")
def comfy_run_dir(tmp_path_factory) -> Path:
    """The ComfyUI base directory of this session (models/, input/, output/, temp/, user/, custom_nodes/,
    server.log)."""
    _comfy_dir()
    raw = os.environ.get("COMFYUI_RUN_DIR")
    if os.environ.get("COMFYUI_URL") and not raw:
        pytest.fail("COMFYUI_URL needs COMFYUI_RUN_DIR (the attached server's --base-directory)", pytrace=False)
    path = Path(raw).expanduser() if raw else tmp_path_factory.mktemp("comfy-run")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


@pytest.fixture(scope="session")
def comfy_models(comfy_run_dir):
    """Tiny random models in the real on-disk formats under ``RUN_DIR/models`` (see tiny_models.py): a
    :class:`tiny_models.TinyModels` whose attributes are the names ComfyUI lists (``.sd15_diffusers``,
    ``.checkpoint``, ``.motion``, ``.depth``, ``.taesd_encoder``, ``.lcm_lora``, ...), ``.path(folder, name)`` and
    ``.paths`` give absolute paths, ``.live2diff_pipeline()`` the in-process reference on the same files."""
    from tiny_models import write_tiny_models

    t0 = time.perf_counter()
    models = write_tiny_models(comfy_run_dir, streaming_t2v=os.environ.get("COMFYUI_TINY_ST2V", "1") != "0")
    print(f"\n[comfy_models] tiny models written to {models.models_dir} in {time.perf_counter() - t0:.1f}s")
    yield models
    if not (_truthy("COMFYUI_KEEP_SERVER") or os.environ.get("COMFYUI_URL") or os.environ.get("COMFYUI_RUN_DIR")):
        shutil.rmtree(models.models_dir, ignore_errors=True)  # ~480 MB; pytest keeps the last 3 temp dirs


@pytest.fixture(scope="session")
def comfy_server(request, comfy_models, comfy_run_dir):
    """A ComfyUI server with the pack linked and the tiny models in place; yields a :class:`client.ComfyClient`
    whose ``.server`` is a :class:`ServerInfo` (url, run_dir, log_path, pid, pack_name, python_module, ...)."""
    comfy_dir = _comfy_dir()
    venv = Path(os.environ.get("COMFYUI_VENV") or DEFAULT_VENV).expanduser()
    flags = os.environ.get("COMFYUI_FLAGS", "--disable-api-nodes")
    timeout = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))
    t0 = time.perf_counter()
    setup_log = None
    attached = os.environ.get("COMFYUI_URL")
    if attached:
        values = {"COMFYUI_URL": attached.rstrip("/"), "COMFYUI_RUN_DIR": str(comfy_run_dir)}
        pid = None
    else:
        script = _find_setup_script()
        if script is not None:
            values, setup_log = _start_with_script(script, comfy_dir, comfy_run_dir, venv, flags, timeout)
        else:
            values = _start_direct(comfy_dir, comfy_run_dir, venv, flags, timeout)
        pid = int(values["COMFYUI_PID"])
    run_dir = Path(values["COMFYUI_RUN_DIR"])
    pack_dir = next((p for p in (run_dir / "custom_nodes").iterdir() if p.resolve() == REPO), None) \
        if (run_dir / "custom_nodes").is_dir() else None
    info = ServerInfo(url=values["COMFYUI_URL"], run_dir=run_dir, log_path=run_dir / "server.log", pid=pid,
                      pack_dir=pack_dir or run_dir / "custom_nodes" / REPO.name,
                      pack_name=(pack_dir or REPO).name, comfy_dir=comfy_dir,
                      venv=Path(values["COMFYUI_VENV"]) if "COMFYUI_VENV" in values else None,
                      started_by_us=pid is not None, startup_s=time.perf_counter() - t0, setup_log=setup_log)
    request.config.stash[_SERVER_KEY] = info
    client = ComfyClient(info.url)
    client.server = info
    client.tiny_models = comfy_models
    try:
        client.system_stats()
    except OSError as e:
        if pid is not None:
            _stop(pid)
        pytest.fail(f"ComfyUI at {info.url} does not answer: {e}", pytrace=False)
    print(f"[comfy_server] {info.url} (pid {pid}) ready after {info.startup_s:.1f}s; log {info.log_path}")
    yield client
    client.close()
    if pid is not None and not _truthy("COMFYUI_KEEP_SERVER"):
        _stop(pid)


@pytest.fixture(scope="session")
def comfy_server_no_models(tmp_path_factory):
    """A second ComfyUI server with the pack linked and an EMPTY ``models/`` (its own base directory): what a new
    user has. Yields a :class:`client.ComfyClient` whose ``.server`` is a :class:`ServerInfo`; always stopped at the
    end of the session. Not available when attaching to a running server (``COMFYUI_URL``)."""
    comfy_dir = _comfy_dir()
    if os.environ.get("COMFYUI_URL"):
        pytest.skip("needs a server of its own with an empty models folder (COMFYUI_URL attaches to one)")
    venv = Path(os.environ.get("COMFYUI_VENV") or DEFAULT_VENV).expanduser()
    flags = os.environ.get("COMFYUI_FLAGS", "--disable-api-nodes")
    timeout = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))
    run_dir = tmp_path_factory.mktemp("comfy-run-no-models").resolve()
    t0 = time.perf_counter()
    script = _find_setup_script()
    if script is not None:
        values, setup_log = _start_with_script(script, comfy_dir, run_dir, venv, flags, timeout)
    else:
        values, setup_log = _start_direct(comfy_dir, run_dir, venv, flags, timeout), None
    pid = int(values["COMFYUI_PID"])
    info = ServerInfo(url=values["COMFYUI_URL"], run_dir=run_dir, log_path=run_dir / "server.log", pid=pid,
                      pack_dir=run_dir / "custom_nodes" / REPO.name, pack_name=REPO.name, comfy_dir=comfy_dir,
                      venv=venv, started_by_us=True, startup_s=time.perf_counter() - t0, setup_log=setup_log)
    client = ComfyClient(info.url)
    client.server = info
    try:
        client.system_stats()
    except OSError as e:
        _stop(pid)
        pytest.fail(f"ComfyUI at {info.url} (empty models) does not answer: {e}", pytrace=False)
    print(f"[comfy_server_no_models] {info.url} (pid {pid}) ready after {info.startup_s:.1f}s; log {info.log_path}")
    yield client
    client.close()
    _stop(pid)



@pytest.fixture
def comfy(request, comfy_server):
    """Per test: the session client, with the server reset first (pending prompts dropped, the running one
    interrupted, models unloaded, node-output cache cleared) and its websocket listening. A failed test's report
    gets the server log lines written during the test."""
    info = comfy_server.server
    comfy_server.reset()
    comfy_server.listen()
    request.node._comfy_log = (info.log_path, info.log_path.stat().st_size if info.log_path.is_file() else 0)
    yield comfy_server
    try:
        comfy_server.clear_queue()
        if comfy_server.queue_status().get("queue_running"):
            comfy_server.interrupt()
    except OSError:
        pass


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    info = config.stash.get(_SERVER_KEY, None)
    if info is None:
        return
    tr = terminalreporter
    if info.pid is not None and _truthy("COMFYUI_KEEP_SERVER") and _alive(info.pid):
        tr.write_sep("-", "ComfyUI server kept running")
        tr.write_line(f"pid {info.pid}, {info.url}, log {info.log_path}")
        tr.write_line(f"attach: COMFYUI_URL={info.url} COMFYUI_RUN_DIR={info.run_dir}; stop: kill {info.pid}")
    elif exitstatus not in (0, 5):
        tr.write_line(f"ComfyUI run dir (server.log, output/): {info.run_dir}")
