# beephost venv job: runs inside a short-lived job container with the venv volume at its path.
# Standard library only. Receives one JSON spec as argv[1]; never runs a shell. Lines starting
# with MARK are events for the host (JSON); every other line is installer output.
import datetime
import json
import os
import shutil
import subprocess
import sys

MARK = "::beephost::"
RECORD = "beephost-venv.json"
FAILED = "beephost-failed.json"
FREEZE = (
    "import importlib.metadata as m, json, sys\n"
    "seen = {}\n"
    "for d in m.distributions():\n"
    "    n = d.metadata['Name']\n"
    "    if n: seen[n] = d.version\n"
    "print(json.dumps({'python': sys.version.split()[0], "
    "'packages': [{'name': k, 'version': v} for k, v in sorted(seen.items(), key=lambda x: x[0].lower())]}))\n"
)

tail = []


def emit(**event):
    print(MARK + json.dumps(event), flush=True)


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(argv):
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    for line in proc.stdout:
        line = line.rstrip("\n")
        print(line, flush=True)
        tail.append(line)
        del tail[:-40]
    return proc.wait()


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def size_of(root):
    total = 0
    for base, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def installer():
    """uv when the image has it, else this Python's pip (>= 22.3 can target another
    interpreter), else the venv's own pip."""
    uv = shutil.which("uv")
    if uv:
        return "uv", [uv, "pip"]
    try:
        import pip

        major, minor = (int(x) for x in pip.__version__.split(".")[:2])
        if (major, minor) >= (22, 3):
            return "pip", [sys.executable, "-m", "pip"]
    except Exception:
        pass
    return "venv-pip", None


def fail(spec, message, code=1):
    emit(event="failed", error=message, log_tail=tail[-20:])
    if spec["action"] == "create":
        write_json(
            os.path.join(spec["venv"], FAILED),
            {"error": message, "log_tail": tail[-20:], "time": now()},
        )
    sys.exit(code)


def freeze_and_record(spec, kind, previous, requested):
    venv = spec["venv"]
    out = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-I", "-c", FREEZE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if out.returncode != 0:
        tail.extend(out.stdout.splitlines()[-20:])
        return None
    frozen = json.loads(out.stdout)
    record = {
        "format": 1,
        "name": spec["name"],
        "runtime": spec["runtime"],
        "python": frozen["python"],
        "installer": kind,
        "requested": requested,
        "packages": frozen["packages"],
        "size": size_of(venv),
        "created": (previous or {}).get("created") or now(),
        "updated": now(),
    }
    # The record is written last: a venv without one never counts as ready.
    write_json(os.path.join(venv, RECORD), record)
    emit(event="record", record=record)
    return record


def offline_args(args):
    """The source arguments without the index: what installs from the wheel cache."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--index-url":
            skip = True
        elif a != "--no-index":
            out.append(a)
    return out + ["--no-index"]


def fill_wheel_cache(kind, spec):
    """With pip and an index: fetch what the request resolves to into the shared wheel cache
    (files already there are not downloaded again, whatever the index's cache headers say),
    so the install itself runs from the cache. uv keeps its own cache."""
    cache = spec.get("wheel_cache")
    args = spec.get("source_args", [])
    if kind != "pip" or not cache or "--no-index" in args or spec.get("remove"):
        return False
    os.makedirs(cache, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--progress-bar", "off", "--dest", cache, "--find-links", cache] + args
    argv += spec.get("packages", [])
    if spec.get("requirements"):
        argv += ["-r", write_requirements(spec)]
    emit(event="phase", phase="install", message="fetching into the package cache")
    if run(argv) != 0:
        fail(spec, "fetching the packages failed")
    return True


def write_requirements(spec):
    path = "/tmp/requirements.txt"
    with open(path, "w") as f:
        f.write(spec["requirements"])
    return path


def install_argv(kind, base, venv, spec, cached=False):
    python = os.path.join(venv, "bin", "python")
    if kind == "venv-pip":
        base = [python, "-m", "pip"]
    elif kind == "pip":
        base = base + ["--python", python]
    if spec.get("remove"):
        if kind == "uv":
            return base + ["uninstall", "--python", python] + spec["remove"]
        return base + ["uninstall", "-y"] + spec["remove"]
    if kind == "uv":
        argv = base + ["install", "--python", python]
    else:
        argv = base + [
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
        ]
    if cached:
        argv += ["--find-links", spec["wheel_cache"]] + offline_args(spec.get("source_args", []))
    else:
        argv += spec.get("source_args", [])
    argv += spec.get("packages", [])
    if spec.get("requirements"):
        argv += ["-r", write_requirements(spec)]
    return argv


def create(spec):
    venv = spec["venv"]
    remove(os.path.join(venv, RECORD))
    remove(os.path.join(venv, FAILED))
    kind, base = installer()
    emit(event="phase", phase="venv", message=f"creating the venv with {sys.executable} ({kind})")
    if kind == "uv":
        argv = base[:-1] + ["venv", "--python", sys.executable, venv]
    elif kind == "pip" and not spec.get("with_pip"):
        argv = [sys.executable, "-m", "venv", "--without-pip", venv]
    else:
        argv = [sys.executable, "-m", "venv", venv]
    if run(argv) != 0:
        fail(spec, "creating the venv failed")
    if spec.get("packages") or spec.get("requirements"):
        cached = fill_wheel_cache(kind, spec)
        emit(event="phase", phase="install", message="installing " + " ".join(spec.get("packages", [])))
        if run(install_argv(kind, base, venv, spec, cached)) != 0:
            fail(spec, "installing the packages failed")
    emit(event="phase", phase="freeze", message="recording the installed packages")
    if freeze_and_record(spec, kind, None, spec["requested"]) is None:
        fail(spec, "the venv's python does not run")


def change(spec):
    venv = spec["venv"]
    previous = None
    try:
        with open(os.path.join(venv, RECORD)) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        pass
    kind, base = installer()
    what = "removing " + " ".join(spec["remove"]) if spec.get("remove") else "installing " + " ".join(spec.get("packages", []))
    cached = fill_wheel_cache(kind, spec)
    emit(event="phase", phase="install", message=what)
    code = run(install_argv(kind, base, venv, spec, cached))
    # Whatever pip did, the record describes what is there now.
    emit(event="phase", phase="freeze", message="recording the installed packages")
    # A failed change keeps what was asked for before.
    requested = spec["requested"] if code == 0 else (previous or {}).get("requested", [])
    recorded = freeze_and_record(spec, kind, previous, requested)
    if code != 0:
        fail(spec, ("removing" if spec.get("remove") else "installing") + " the packages failed")
    if recorded is None:
        fail(spec, "the venv's python does not run")


def read(spec):
    for name, path in sorted(spec["dirs"].items()):
        for file, event in ((RECORD, "record"), (FAILED, "failed")):
            try:
                with open(os.path.join(path, file)) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            if event == "record":
                emit(event="record", name=name, record=data)
            else:
                emit(event="failed", name=name, error=data.get("error", ""), log_tail=data.get("log_tail", []))
            break
        else:
            emit(event="missing", name=name)


def main():
    spec = json.loads(sys.argv[1])
    action = spec["action"]
    if action == "create":
        create(spec)
    elif action == "install":
        change(spec)
    elif action == "read":
        read(spec)
    else:
        fail(spec, f"unknown action {action}", 2)


main()
