"""``mel submit index|eval|link``: run a ``mel`` command as a job on a running Ray cluster.

The job is ``python -m mel <command> <its arguments> --set ...``: the validated config travels as
``--set`` overrides (:func:`mel.config_overrides.config_overrides`, so no config file or absolute path of
the caller is needed on the cluster) with ``ray.address=auto``, so the job's driver joins the cluster it
runs on instead of starting a Ray of its own. The working directory (by default this checkout, without
``.venv``, ``.git``, ``runs``...) is uploaded with the job and becomes its current directory: relative
input paths resolve inside that copy. The submission goes through Ray's ``JobSubmissionClient``; the
caller follows the job's logs and status and gets its exit status: 0 SUCCEEDED, 1 FAILED, 130 STOPPED
(Ctrl-C stops the job), 124 when ``submit.timeout_s`` ran out (the job is stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from mel.config import Config, SubmitConfig
from mel.config_overrides import config_overrides
from mel.errors import ConfigError, MelError

log = logging.getLogger("mel.submit")

COMMANDS = ("index", "eval", "link")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
EXIT_TIMEOUT = 124
# Arguments naming outputs: a relative path would land in the job's temporary copy of the working dir.
OUTPUT_ARGS = {"index": ("out",), "link": ("out",), "eval": ("report", "index")}
# Always in the job's environment: unbuffered logs, and the driver's own runtime_env (mel.raylocal) may
# set keys the job's runtime_env also has (env vars, py_modules) without Ray refusing the merge.
JOB_ENV_VARS = {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}


class SubmitError(MelError):
    """The job could not be submitted or followed (no address, cluster unreachable, refused)."""


class JobClient(Protocol):
    """What ``mel submit`` uses of ``ray.job_submission.JobSubmissionClient`` (a test double implements it)."""

    def submit_job(self, **kwargs: Any) -> str: ...
    def get_job_status(self, job_id: str) -> Any: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def get_job_logs(self, job_id: str) -> str: ...
    def stop_job(self, job_id: str) -> bool: ...
    def tail_job_logs(self, job_id: str) -> Any: ...


@dataclass(frozen=True)
class JobSpec:
    """Everything ``submit_job`` gets."""

    entrypoint: str
    submission_id: str
    runtime_env: dict[str, Any] = field(default_factory=dict)
    entrypoint_num_cpus: float = 0
    entrypoint_num_gpus: float = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def submit_kwargs(self) -> dict[str, Any]:
        return {"entrypoint": self.entrypoint, "submission_id": self.submission_id, "runtime_env": self.runtime_env,
                "entrypoint_num_cpus": self.entrypoint_num_cpus, "entrypoint_num_gpus": self.entrypoint_num_gpus,
                "metadata": self.metadata}


# ------------------------------------------------------------------------------------------ building the job
def repo_root() -> Path | None:
    """The checkout this ``mel`` runs from (the directory holding pyproject.toml), or None when installed."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def job_config(cfg: Config) -> Config:
    """The config the job runs with: the caller's, joined to the cluster it runs on (``ray.address=auto``)."""
    out = cfg.model_copy(deep=True)
    if out.ray.address not in (None, "auto"):
        log.warning("ray.address %r is replaced by 'auto' in the job: it joins the cluster it runs on",
                    out.ray.address)
    out.ray.address = "auto"
    return out


def job_entrypoint(cfg: Config, command: str, argv: Sequence[str], *, log_level: str | None = None) -> str:
    """The shell command the cluster runs: ``python -m mel [--log-level L] COMMAND ARGV --set ...``."""
    if command not in COMMANDS:
        raise ConfigError(f"mel submit: unknown command {command!r}; one of {list(COMMANDS)}")
    parts = [cfg.submit.python, "-m", "mel"]
    if log_level:
        parts += ["--log-level", log_level]
    parts += [command, *argv]
    for item in config_overrides(job_config(cfg), exclude=("submit",)):
        parts += ["--set", item]
    return shlex.join(parts)


def job_runtime_env(sc: SubmitConfig) -> dict[str, Any]:
    """The job's runtime_env: the working_dir upload with its excludes, ``submit.runtime_env``, our env vars."""
    env: dict[str, Any] = {k: v for k, v in sc.runtime_env.items() if k != "env_vars"}
    env["env_vars"] = {**sc.runtime_env.get("env_vars", {}), **JOB_ENV_VARS}
    if sc.upload_working_dir:
        wd = Path(sc.working_dir) if sc.working_dir is not None else repo_root()
        if wd is None:
            raise ConfigError("submit.working_dir: no checkout found next to this mel (installed package); set "
                              "submit.working_dir, or submit.upload_working_dir=false to run the cluster's mel")
        if not wd.is_dir():
            raise ConfigError(f"submit.working_dir: {wd} is not a directory")
        env["working_dir"] = str(wd.resolve())
        env["excludes"] = list(sc.excludes)
    return env


def submission_id(prefix: str, command: str) -> str:
    return f"{prefix}-{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def build_job(cfg: Config, command: str, argv: Sequence[str], *, log_level: str | None = None) -> JobSpec:
    sc = cfg.submit
    return JobSpec(entrypoint=job_entrypoint(cfg, command, argv, log_level=log_level),
                   submission_id=submission_id(sc.job_id_prefix, command), runtime_env=job_runtime_env(sc),
                   entrypoint_num_cpus=sc.entrypoint_num_cpus, entrypoint_num_gpus=sc.entrypoint_num_gpus,
                   metadata={"mel_command": command})


def argv_from_namespace(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        skip: Sequence[str] = ("help", "config", "overrides")) -> list[str]:
    """Re-create the command-line arguments of ``parser`` that ``args`` holds (those not at their default)."""
    out: list[str] = []
    for action in parser._actions:  # noqa: SLF001 -- argparse has no public list of actions
        if action.dest in skip or action.dest is argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        opt = action.option_strings[-1] if action.option_strings else None
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            out.append(str(opt))
        elif isinstance(action, argparse._AppendAction):  # noqa: SLF001
            for v in value:
                out += [str(opt), str(v)]
        elif isinstance(action, argparse._StoreAction):  # noqa: SLF001
            out += [str(opt), str(value)] if opt else [str(value)]
        else:
            raise ConfigError(f"mel submit cannot pass on argument {action.dest!r} ({type(action).__name__})")
    return out


def warn_relative_outputs(command: str, args: argparse.Namespace, out: TextIO) -> None:
    for dest in OUTPUT_ARGS.get(command, ()):
        value = getattr(args, dest, None)
        if value and not os.path.isabs(value):
            print(f"mel submit: warning: --{dest} {value} is relative: on the cluster it lands in the job's "
                  "temporary copy of the working dir; give a path on storage the cluster keeps", file=out)


# ------------------------------------------------------------------------------------------ running it
def resolve_address(sc: SubmitConfig) -> str:
    address = sc.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster address: set submit.address (--address), or RAY_ADDRESS, to the cluster's "
                          "job API, e.g. http://127.0.0.1:8265")
    return address


def ray_job_client(address: str) -> JobClient:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SubmitError(f"cannot reach the Ray job API at {address}: {e}") from e


def _status(client: JobClient, job_id: str) -> str:
    status = client.get_job_status(job_id)
    return str(getattr(status, "value", status))


async def _tail_logs(client: JobClient, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


async def _watch(client: JobClient, job_id: str, sc: SubmitConfig, out: TextIO, deadline: float | None) -> str:
    """Print status changes until the job ends; returns its terminal status, or 'TIMEOUT'."""
    last = None
    while True:
        status = await asyncio.to_thread(_status, client, job_id)
        if status != last:
            print(f"[mel submit] job {job_id}: {status}", file=out, flush=True)
            last = status
        if status in EXIT_CODES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return "TIMEOUT"
        await asyncio.sleep(sc.poll_interval_s)


async def _follow(client: JobClient, job_id: str, sc: SubmitConfig, out: TextIO) -> str:
    deadline = time.monotonic() + sc.timeout_s if sc.timeout_s is not None else None
    tail = asyncio.create_task(_tail_logs(client, job_id, out)) if sc.follow_logs else None
    try:
        status = await _watch(client, job_id, sc, out, deadline)
        if tail is not None and status != "TIMEOUT":
            try:  # the log stream closes once the job has ended: let it deliver its last lines
                await asyncio.wait_for(tail, timeout=30)
            except (asyncio.TimeoutError, RuntimeError) as e:
                log.debug("log stream of %s ended with %r", job_id, e)
        return status
    finally:
        if tail is not None and not tail.done():
            tail.cancel()


def _stop(client: JobClient, job_id: str, sc: SubmitConfig, out: TextIO, why: str) -> None:
    print(f"[mel submit] {why}: stopping job {job_id}", file=out, flush=True)
    try:
        client.stop_job(job_id)
        deadline = time.monotonic() + 30
        while _status(client, job_id) not in EXIT_CODES and time.monotonic() < deadline:
            time.sleep(sc.poll_interval_s)
    except Exception as e:  # noqa: BLE001 -- report, the exit status says what happened
        print(f"[mel submit] could not stop job {job_id}: {e}", file=out, flush=True)


def wait_for_job(client: JobClient, job_id: str, sc: SubmitConfig, out: TextIO | None = None) -> int:
    """Follow a submitted job to its end; return its exit status (see module doc)."""
    out = out or sys.stdout
    try:
        status = asyncio.run(_follow(client, job_id, sc, out))
    except KeyboardInterrupt:
        _stop(client, job_id, sc, out, "interrupted")
        return EXIT_CODES["STOPPED"]
    if status == "TIMEOUT":
        _stop(client, job_id, sc, out, f"timeout of {sc.timeout_s:g}s reached")
        return EXIT_TIMEOUT
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    message = getattr(info, "message", None)
    print(f"[mel submit] job {job_id} {status}" + (f" (exit code {code})" if code is not None else "")
          + (f": {message}" if message and status != "SUCCEEDED" and not sc.follow_logs else ""), file=out,
          flush=True)
    return EXIT_CODES[status]


def submit(cfg: Config, command: str, argv: Sequence[str], *, log_level: str | None = None,
           client_factory: Callable[[str], JobClient] | None = None, out: TextIO | None = None) -> int:
    """Submit ``mel COMMAND ARGV`` with ``cfg`` to the cluster at ``cfg.submit.address`` and (unless
    ``submit.wait`` is off) follow it; returns the exit status."""
    out = out or sys.stdout
    sc = cfg.submit
    spec = build_job(cfg, command, argv, log_level=log_level)
    address = resolve_address(sc)
    client = (client_factory or ray_job_client)(address)
    print(f"[mel submit] submitting to {address}: {spec.entrypoint}", file=out, flush=True)
    try:
        job_id = client.submit_job(**spec.submit_kwargs())
    except (RuntimeError, ValueError, ConnectionError) as e:
        raise SubmitError(f"the cluster at {address} refused job {spec.submission_id}: {e}") from e
    print(f"[mel submit] job {job_id} submitted", file=out, flush=True)
    if not sc.wait:
        print(f"[mel submit] follow it with: ray job logs -f {job_id} --address {address}   "
              f"(status: ray job status {job_id}; stop: ray job stop {job_id})", file=out, flush=True)
        return 0
    return wait_for_job(client, job_id, sc, out)
