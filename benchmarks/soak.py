"""Soak the pack in a real ComfyUI server: N mixed jobs through POST /prompt (issue #16).

Starts ``main.py`` (devkit.comfy_server) with the pack and a probe node (``soak_probe.py``) installed and the
tiny SD1 checkpoint (devkit.tiny_models), then queues the jobs of ``soak_jobs.job_plan``: every method in
both guidance modes, several samplers, batch 1 and 2, the KSampler and SamplerCustom nodes, a chained config, plain
KSampler jobs, bad inputs (``advanced = "scale_factor = inf"``, ``softmax_scale = nan``, an unknown key, a NaN
step size, a refused sampler, a malformed override, ...) and three Cancels (POST /interrupt while a job samples).

- **expected error**: a bad job refused at validation (HTTP 400) or by the pack's own error (ValueError,
  PromptError, BindingGuidanceError) whose message names the input; **unexpected**: any other failure, or any
  failure of a good job. A bad input that runs anyway is listed as *accepted*.
- **nan_outputs**: LATENT / IMAGE outputs with a non-finite element (every output goes through the probe).
- **leak_identical**: the first and the last job are the same plain KSampler graph; their latent and decoded image
  must be byte-identical (the last one re-executed, not served from ComfyUI's cache).
- **rss_growth_mb**: the server's VmRSS (``/proc/<pid>/status``) at the end minus after the warm-up.
- **interrupts_ok**: cancelled jobs that ended interrupted, with the server running the next job fine.
- **crashes**: the server process died.

Last line (one line; wrapped here):

    soak: jobs= ok= expected_errors= unexpected_errors= crashes= nan_outputs= leak_identical= rss_growth_mb=
          interrupts_ok=

    .venv/bin/python benchmarks/soak.py             # 100 jobs
    .venv/bin/python benchmarks/soak.py --jobs 12   # a quick run while developing
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from devkit.comfy_server import ComfyServer  # noqa: E402
from soak_jobs import Job, job_plan, warmup_count  # noqa: E402

PACK_ERRORS = ("ValueError", "PromptError", "BindingGuidanceError")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100, help="number of jobs (default 100)")
    parser.add_argument("--job-timeout", type=float, default=600, help="seconds one job may take")
    parser.add_argument("--keep", action="store_true", help="keep the server's folder (log, outputs)")
    return parser.parse_args()


@dataclass
class Result:
    """What became of one job."""

    outcome: str
    """ok, interrupted, expected_error, unexpected_error or crash."""
    detail: str = ""
    probes: dict[str, dict] = field(default_factory=dict)
    cached: tuple[str, ...] = ()
    seconds: float = 0.0


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024


def checkpoint_file() -> Path:
    from devkit.comfy_env import bootstrap_comfy
    from devkit.tiny_models import cached_tiny_checkpoint

    bootstrap_comfy()  # the builder uses ComfyUI's model classes when the file is not cached yet
    return cached_tiny_checkpoint("sd15")


def refusal_outcome(job: Job, text: str) -> str:
    """A refusal is expected when the job is bad and the message names its culprit."""
    return "expected_error" if job.bad and any(word in text for word in job.culprits) else "unexpected_error"


def cancel_when_running(server: ComfyServer, prompt_id: str, delay: float, timeout: float = 120) -> None:
    """POST /interrupt for ``prompt_id`` once it has been running for ``delay`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = server.get_json("/queue")["queue_running"]
        if any(item[1] == prompt_id for item in running):
            time.sleep(delay)
            server.post_json("/interrupt", {"prompt_id": prompt_id})
            return
        time.sleep(0.2)


def history_result(job: Job, entry: dict) -> Result:
    messages = {kind: data for kind, data in entry["status"].get("messages", [])}
    cached = tuple(messages.get("execution_cached", {}).get("nodes", []))
    probes = {out["soak"][0]["label"]: out["soak"][0] for out in entry.get("outputs", {}).values() if "soak" in out}
    if entry["status"]["status_str"] == "success":
        return Result("ok", "accepted a bad input" if job.bad else "", probes, cached)
    if "execution_interrupted" in messages:
        return Result("interrupted", "", probes, cached)
    error = messages.get("execution_error", {})
    kind = str(error.get("exception_type", "")).rsplit(".", 1)[-1]
    text = f"{error.get('node_type')}: {kind}: {error.get('exception_message', '')}".strip()
    outcome = refusal_outcome(job, text) if kind in PACK_ERRORS else "unexpected_error"
    return Result(outcome, text, probes, cached)


def run_job(server: ComfyServer, job: Job, timeout: float, cancel_delay: float = 2.0) -> Result:
    started = time.monotonic()
    status, answer = server.post_json("/prompt", {"prompt": job.graph, "client_id": "soak"})
    if status != 200:
        text = json.dumps(answer)
        result = Result(refusal_outcome(job, text), f"validation: {text[:300]}")
    elif answer.get("node_errors"):  # ComfyUI runs the outputs that validated; none of a soak job's do without it
        server.wait_for_history(answer["prompt_id"], timeout=timeout)
        result = Result(refusal_outcome(job, json.dumps(answer)), f"validation: {json.dumps(answer)[:300]}")
    else:
        prompt_id = answer["prompt_id"]
        if job.interrupt:
            cancel_when_running(server, prompt_id, cancel_delay)
        try:
            result = history_result(job, server.wait_for_history(prompt_id, timeout=timeout))
        except AssertionError as error:  # wait_for_history's timeout
            result = Result("unexpected_error", f"no result: {str(error)[:200]}")
    if server.process.poll() is not None:
        result = Result("crash", f"server exited with {server.process.returncode}")
    result.seconds = time.monotonic() - started
    return result


def leak_identical(first: Result, last: Result) -> bool:
    """The plain KSampler graph gave the same bytes at the start and the end, and really ran again at the end."""
    keys = ("latent", "image")
    return (first.outcome == last.outcome == "ok" and "sampler" not in last.cached
            and all(key in first.probes and first.probes[key]["sha256"] == last.probes[key]["sha256"] for key in keys))


def interrupts_recovered(results: list[Result], jobs: list[Job]) -> tuple[int, int]:
    """(cancels that ended interrupted and were followed by a job that ran normally, cancels)."""
    indices = [i for i, job in enumerate(jobs) if job.interrupt]
    ok = sum(1 for i in indices if results[i].outcome == "interrupted" and i + 1 < len(results)
             and results[i + 1].outcome in ("ok", "expected_error"))
    return ok, len(indices)


def summary_line(results: list[Result], jobs: list[Job], rss_growth: float) -> str:
    count = {name: sum(r.outcome == name for r in results) for name in
             ("ok", "expected_error", "unexpected_error", "crash", "interrupted")}
    nan_outputs = sum(1 for r in results for probe in r.probes.values() if probe["nonfinite"])
    ok_cancels, cancels = interrupts_recovered(results, jobs)
    identical = len(results) == len(jobs) and leak_identical(results[0], results[-1])
    return (f"soak: jobs={len(results)} ok={count['ok']} expected_errors={count['expected_error']} "
            f"unexpected_errors={count['unexpected_error']} crashes={count['crash']} nan_outputs={nan_outputs} "
            f"leak_identical={'yes' if identical else 'no'} rss_growth_mb={rss_growth:.1f} "
            f"interrupts_ok={ok_cancels}/{cancels}")


def log_exceptions(log: str) -> collections.Counter[str]:
    """The exception line ending each traceback in a server log, counted."""
    found: collections.Counter[str] = collections.Counter()
    for block in log.split("Traceback (most recent call last):")[1:]:
        line = next((ln for ln in block.splitlines()[1:] if ln and not ln[0].isspace()), "?")
        found[line[:160]] += 1
    return found


def main() -> None:
    args = parse_args()
    checkpoint = checkpoint_file()
    work = Path(tempfile.mkdtemp(prefix="binding-soak-"))
    probe_folder = work / "comfy" / "custom_nodes"
    probe_folder.mkdir(parents=True)
    shutil.copy2(ROOT / "benchmarks" / "soak_probe.py", probe_folder / "soak_probe.py")
    jobs = job_plan(checkpoint.name, args.jobs)
    warmup = warmup_count(checkpoint.name, args.jobs)
    results: list[Result] = []
    rss_series: list[float] = [0.0]
    rss_warm = rss_end = 0.0
    started = time.monotonic()
    server = ComfyServer(work, checkpoint.parent).start()
    startup_log = len(server.log_text())  # start-up tracebacks (optional ComfyUI nodes failing to import) aside
    try:
        for index, job in enumerate(jobs):
            # cancels land 2, 5 and 8 s into sampling: the first guided step, and later ones
            delay = 2.0 + 3.0 * sum(1 for earlier in jobs[:index] if earlier.interrupt)
            result = run_job(server, job, args.job_timeout, delay)
            results.append(result)
            nan = [label for label, probe in result.probes.items() if probe["nonfinite"]]
            if server.process.poll() is None:
                rss_series.append(rss_mb(server.process.pid))
            print(f"[{index:3d}] {job.name}: {result.outcome} ({result.seconds:.1f} s, RSS {rss_series[-1]:.0f} MB)"
                  f"{' NaN in ' + ', '.join(nan) if nan else ''}{' - ' + result.detail if result.detail else ''}",
                  flush=True)
            if result.outcome == "crash":
                print(server.log_tail())
                break
            if index + 1 == warmup:
                rss_warm = rss_series[-1]
                print(f"RSS after {warmup} warm-up jobs: {rss_warm:.0f} MB", flush=True)
        if server.process.poll() is None:
            rss_end = rss_mb(server.process.pid)
            history = server.request("/history", timeout=120)[1]
            print(f"history held by the server: {len(json.loads(history))} entries, {len(history) / 2**20:.1f} MB "
                  "as JSON", flush=True)
        log = server.log_text()[startup_log:]
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    accepted = sorted({job.name for job, r in zip(jobs, results, strict=False) if job.bad and r.outcome == "ok"})
    after = rss_series[warmup + 1:] or [float("nan")]
    print(f"RSS at the end: {rss_end:.0f} MB (after the warm-up: min {min(after):.0f}, max {max(after):.0f}); "
          f"{time.monotonic() - started:.0f} s in all"
          f"{'; server folder kept at ' + str(work) if args.keep else ''}")
    print(f"bad inputs that ran anyway: {accepted or 'none'}")
    print(f"server log after start-up: {log.count('invalid value encountered')} 'invalid value encountered' "
          f"warnings; tracebacks: {dict(log_exceptions(log)) or 'none'}")
    print(summary_line(results, jobs, rss_end - rss_warm if rss_end and rss_warm else float("nan")))


if __name__ == "__main__":
    main()
