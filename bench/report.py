"""The report of a suite run: the bar evaluated, ``report.md`` rendered, the PNG plots drawn.

Everything here is a pure function of the results dict (``results.json``), so a report can be rendered
again from the JSON of an earlier run: ``python -m bench.report bench/results/<run>/results.json``.

Which figure the bar's throughput targets are read on: **requests per server CPU-second** (req/CPU-s).
On a machine where the load generator and the mock share cores with nothing but each other, raw req/s
is capped by whichever side saturates first, and nginx (at two to three times the gateway's efficiency)
is usually waiting for the load side; its req/s is then the load side's ceiling, not nginx's. req/CPU-s
is what one core of each server delivers, saturated or not. Both ratios are in the tables.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BAR",
    "evaluate_bar",
    "main",
    "make_plots",
    "other_load",
    "render_markdown",
    "shared_machine_note",
]

#: (id, scenario, target as the issue states it, threshold)
BAR: tuple[tuple[str, str, str, float], ...] = (
    ("1", "1. chat non-stream", "≥ 0.6x nginx proxy_pass throughput", 0.6),
    ("3", "3. streamed, 20 chunks", "≥ 0.6x nginx proxy_pass relaying the same stream", 0.6),
    ("4", "4. no-upstream answers", "≥ 1.0x nginx proxy_pass throughput", 1.0),
    ("latency", "added latency at 50% load", "p99 ≤ 1 ms", 1.0),
    ("5", "5. open streams", "5,000 held by one worker, ≤ 20 KB RSS each", 20.0),
    ("7", "7. soak", "RSS growth ≤ 10%, zero errors", 0.10),
    ("8", "8. limits, shared state", "≤ 0.05 shared-state calls per admitted request at 10,000 requests/min",
     0.05),
)
#: seconds of warm-up the limits measurement needs before its figure says anything (the lease sizing's
#: rate estimate averages over about 10 s and starts at 0)
LIMITS_SETTLED_WARMUP = 30.0


# --- the bar (pure) -----------------------------------------------------------------------------------------


def _case(scenarios: Mapping[str, Any], scenario: str, case: str) -> dict[str, Any] | None:
    sc = scenarios.get(scenario)
    if not sc or sc.get("status") != "ok":
        return None
    for c in sc.get("cases", []):
        if c.get("name") == case and "targets" in c:
            return dict(c)
    return None


def _why_missing(scenarios: Mapping[str, Any], scenario: str) -> str:
    sc = scenarios.get(scenario)
    if sc is None:
        return f"not run (scenario `{scenario}` not selected)"
    if sc.get("status") == "failed":
        return f"scenario `{scenario}` failed: {str(sc.get('reason', '')).splitlines()[0][:200]}"
    return f"no result in scenario `{scenario}`"


def _fx(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def evaluate_bar(scenarios: Mapping[str, Any], *, streams_required: int = 5000) -> list[dict[str, Any]]:
    """One row per target of the bar: ``measured`` (text), ``value``, ``passed`` (True, False, or None when
    it was not measured, with ``note`` saying why). A target measured with errors does not pass."""
    rows: list[dict[str, Any]] = []
    spec = {b[0]: b for b in BAR}

    def row(key: str, measured: str, value: float | None, passed: bool | None, note: str = "") -> None:
        _, what, target, _ = spec[key]
        rows.append({"id": key, "scenario": what, "target": target, "measured": measured, "value": value,
                     "passed": passed, "note": note})

    for key, scenario, case in (("1", "chat", "chat"), ("3", "stream", "stream-20")):
        c = _case(scenarios, scenario, case)
        if c is None:
            row(key, "-", None, None, _why_missing(scenarios, scenario))
            continue
        r = c["ratios"]
        v = r.get("req_per_cpu_s")
        ok = v is not None and v >= spec[key][3] and bool(c.get("ok"))
        row(key, f"{_fx(v)} per core (req/CPU-s); {_fx(r.get('rps'))} req/s", v, ok,
            "" if c.get("ok") else "a target had errors: not a result")

    # 4: each no-upstream answer of the gateway against nginx *proxying* the small chat (scenario 1)
    chat = _case(scenarios, "chat", "chat")
    local = [c for c in (_case(scenarios, "local", n) for n in ("notfound", "badkey", "ratelimited"))
             if c is not None]
    if chat is None or not local:
        row("4", "-", None, None, _why_missing(scenarios, "chat" if chat is None else "local"))
    else:
        base = chat["targets"]["nginx"]["median_req_per_cpu_s"]
        parts, values, ok = [], [], True
        for c in local:
            v = c["targets"]["gateway"]["median_req_per_cpu_s"] / base if base else None
            values.append(v)
            parts.append(f"{c['name']} {_fx(v)}")
            ok = ok and v is not None and v >= spec["4"][3] and bool(c.get("ok"))
        worst = min((v for v in values if v is not None), default=None)
        row("4", "; ".join(parts) + " per core, against nginx proxy_pass of scenario 1", worst, ok)

    lat = scenarios.get("latency") or {}
    ran = lat.get("status") == "ok"
    added = lat.get("added_ms", {}).get("0.5") if ran else None
    if added is None:
        row("latency", "-", None, None,
            "no run at 50% load (see --latency-loads)" if ran else _why_missing(scenarios, "latency"))
    else:
        p99 = added.get("p99")
        measured = (f"p99 {_fms_signed(p99)}, p50 {_fms_signed(added.get('p50'))} at "
                    f"{added['offered_rps']:,.0f} req/s")
        caveats = _pair_caveats(lat, 0.5)
        if caveats:  # a figure about the load side or the machine, not about the gateway
            row("latency", measured, p99, None, f"not valid: {caveats}")
        else:
            row("latency", measured, p99, p99 is not None and p99 <= spec["latency"][3])

    st = scenarios.get("open-streams") or {}
    g = st.get("targets", {}).get("gateway") if st.get("status") == "ok" else None
    if g is None:
        row("5", "-", None, None, _why_missing(scenarios, "open-streams"))
    else:
        kb = g.get("kb_per_stream")
        held = g.get("open_at_release", g.get("open", 0))
        asked = st["streams"]
        measured = f"{held:,} of {asked:,} held" + (f"; {kb:.1f} KB each" if kb is not None else "")
        if asked < streams_required:  # a smaller run says nothing about 5,000
            row("5", measured, kb, None, f"only {asked:,} streams were asked for in this run")
        else:
            row("5", measured, kb, kb is not None and kb <= spec["5"][3] and held >= streams_required)

    soak = scenarios.get("soak")
    if not soak or soak.get("status") != "ok":
        row("7", "-", None, None, _why_missing(scenarios, "soak"))
    else:
        growth = soak.get("rss_growth")
        errors = soak.get("error_total", 0)
        ok = growth is not None and growth <= spec["7"][3] and errors == 0
        warm, end = soak["rss_warm_kb"] / 1024, soak["rss_end_kb"] / 1024
        row("7", f"RSS {_pct_signed(growth)} ({warm:.1f} → {end:.1f} MB over {soak['requests']:,} requests), "
            f"{errors} errors", growth, ok)

    lim = scenarios.get("limits")
    runs = [r for r in (lim or {}).get("runs", []) if r.get("calls_per_request") is not None]
    if not lim or lim.get("status") != "ok" or not runs:
        row("8", "-", None, None, _why_missing(scenarios, "limits"))
    else:
        worst = max(r["calls_per_request"] for r in runs)
        measured = "; ".join(f"{r['calls_per_request']:.4f} ({_one_of(r['workers'])})" for r in runs)
        errors = sum(r.get("errors", 0) for r in runs)
        if errors:
            measured += f"; {errors} answers other than 200"
        if lim.get("rpm") != 10_000:
            row("8", measured, worst, None, f"measured at {lim.get('rpm'):,} requests/min")
        elif (lim.get("warmup_s") or 0) < LIMITS_SETTLED_WARMUP:
            row("8", measured, worst, None, f"{lim.get('warmup_s'):g} s of warm-up: the lease sizing had not "
                "learnt the rate")
        else:
            row("8", measured, worst, worst <= spec["8"][3] and errors == 0)
    return rows


def _one_of(workers: int) -> str:
    return "one worker" if workers == 1 else f"one worker of {workers}"


def _pair_caveats(lat: Mapping[str, Any], fraction: float) -> str:
    """The caveats of the gateway's and nginx's open-loop points at ``fraction`` of the gateway's
    saturation ("" when both are clean)."""
    out = []
    for p in lat.get("points", []):
        if p.get("fraction") == fraction and p.get("relative_to") == "gateway" and p.get("caveat"):
            out.append(f"{p['target']}: {p['caveat']}")
    return "; ".join(out)


# --- formatting ---------------------------------------------------------------------------------------------


def _fms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} µs" if abs(v) < 1 else f"{v:.2f} ms"


def _fms_signed(v: float | None) -> str:
    if v is None:
        return "-"
    return ("+" if v >= 0 else "-") + _fms(abs(v))


def _pct_signed(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.1f}%"


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _result(passed: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "not measured"}[passed]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    al = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in al]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _machine_line(m: Mapping[str, Any]) -> str:
    git = m.get("git") or {}
    parts = [f"{m.get('cpu_model') or 'unknown CPU'}, {m.get('cpus_available')} CPUs available"]
    if m.get("mem_total_mb"):
        parts.append(f"{m['mem_total_mb'] / 1024:.0f} GB RAM")
    nginx = str(m.get("nginx")).replace("nginx version: ", "")
    wrk = str(m.get("wrk")).split(" Copyright")[0].split(" [")[0]
    parts += [str(m.get("platform")), f"Python {m.get('python')}", nginx, wrk]
    compiled = m.get("gateway_compiled_core")
    if compiled is not None:
        parts.append("compiled core: " + ("yes" if all(compiled.values()) else f"PARTLY {compiled}"))
    if git:
        dirty = " (uncommitted changes)" if git.get("dirty") else ""
        parts.append(f"commit {git.get('commit', '')[:10]}{dirty}")
    return "; ".join(parts)


def render_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    sc: Mapping[str, Any] = results.get("scenarios", {})
    s = results.get("settings", {})
    m = results.get("machine", {})
    out = [f"# Benchmark report, {results.get('started', '')}", ""]
    if results.get("quick"):
        out += ["> **Quick run** (`--quick`): rounds of about a second, a harness check. These figures are "
                "not results.", ""]
    out += [f"Machine: {_machine_line(m)}.", ""]
    load = m.get("loadavg_at_start")
    pinning = (f"Pinning: servers under test on CPU {_cpus(s.get('server_cpus'))}; wrk, the load generator "
               f"and the mock upstream on CPU {_cpus(s.get('load_cpus'))}.")
    if load:
        pinning += f" Load average when the run started: {load[0]:.2f}."
    out += [pinning, ""]
    note = shared_machine_note(results)
    if note:
        out += [note, ""]
    out += [f"Gateway: one worker, API keys required (the access phase on every request), call records off; "
            f"nginx: one worker, access log off, HTTP/1.1 keep-alive to the upstream. "
            f"Throughput: {s.get('rounds')} ABBA round(s) of {s.get('duration')} s per target after "
            f"{s.get('warmup')} s of warm-up, wrk -t{s.get('threads')} -c{s.get('connections')}.", ""]

    bar = results.get("bar") or evaluate_bar(sc)
    out += ["## The bar", "", *_table(
        ["scenario", "target", "measured", "result"],
        [[b["scenario"], b["target"], b["measured"] + (f" ({b['note']})" if b.get("note") else ""),
          _result(b["passed"])] for b in bar], "llll"), ""]
    out += ["Throughput targets are read per core: requests per CPU-second of the server's process tree "
            "(see *Reading the figures* below).", ""]

    rows = []
    for name in ("chat", "prompts", "stream", "local"):
        x = sc.get(name)
        if not x:
            continue
        if x.get("status") != "ok":
            why = _first_line(x.get("reason"))
            rows.append([f"{x['number']}. {name}", "-", *["-"] * 10, f"failed: {why}"])
            continue
        for c in x.get("cases", []):
            if "targets" not in c:
                rows.append([f"{x['number']}. {c['name']}", "-", *["-"] * 10, f"skipped: {c.get('skipped')}"])
                continue
            g, n = c["targets"]["gateway"], c["targets"]["nginx"]
            rows.append([
                f"{x['number']}. {c['name']}", c["baseline"].replace("nginx ", ""),
                _n(g["median_rps"]), _n(n["median_rps"]), _fx(c["ratios"]["rps"]),
                _n(g["median_req_per_cpu_s"]), _n(n["median_req_per_cpu_s"]),
                f"**{_fx(c['ratios']['req_per_cpu_s'])}**",
                f"{_pct(g['median_server_cpu_util'])} / {_pct(n['median_server_cpu_util'])}",
                f"{_fms(g['p99_ms'])} / {_fms(n['p99_ms'])}",
                _pct(_max_or_none([g.get("median_other_cpu_util"), n.get("median_other_cpu_util")])),
                str(g["error_total"] + n["error_total"]),
                c["description"],
            ])
        for sk in x.get("skipped", []):
            rows.append([f"{x['number']}. {sk['what']}", "-", *["-"] * 10, f"skipped: {sk['reason']}"])
    if rows:
        out += ["## Throughput (scenarios 1-4)", "", *_table(
            ["case", "baseline", "gw req/s", "nginx req/s", "req/s ratio", "gw req/CPU-s", "nginx req/CPU-s",
             "per-core ratio", "srv CPU gw / nginx", "wrk p99 gw / nginx", "other CPU", "errors", "what"],
            rows, "llrrrrrrrrrrl"), ""]
        out += ["Medians over the rounds. *srv CPU*: the server tree's CPU time over wall time (100% = one "
                "core busy); a server well below 100% was waiting for the load side. wrk's p99 is "
                "closed-loop latency at saturation, not a latency result (see the open-loop table). "
                "*other CPU*: CPU time of everything else on the machine over the wall time, in CPUs (other "
                "work on a shared machine, kernel work charged to no process).", ""]

    out += _latency_section(sc.get("latency"))
    out += _streams_section(sc.get("open-streams"))
    out += _scaling_section(sc.get("scaling"), m)
    out += _soak_section(sc.get("soak"))
    out += _limits_section(sc.get("limits"))

    if plots:
        out += ["## Plots", ""]
        for p in plots:
            out += [f"![{Path(p).stem}]({Path(p).name})", ""]

    out += ["## Reading the figures", "",
            "* **req/CPU-s** (requests per CPU-second) divides the requests a server answered by the CPU "
            "time its whole process tree used (`/proc/<pid>/stat`: supervisor and worker, or nginx's master "
            "and worker). It is what one core of that server delivers, whether or not it was saturated, and "
            "it is the figure the bar's throughput targets are read on. It is also steady on a shared "
            "machine, because only the server's own CPU time counts.",
            "* **req/s** is what this machine did. When the load side (wrk and the Python mock on their own "
            "core) saturates first, req/s is its ceiling, not the server's: compare *srv CPU*.",
            "* **Added latency** is the gateway's open-loop percentile minus nginx's at the same offered "
            "load, in the same run. Latency is measured from each request's scheduled send time, so a stall "
            "is charged to every request it delayed.",
            ""]
    return "\n".join(out).rstrip() + "\n"


def _max_or_none(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return max(vals) if vals else None


def other_load(results: Mapping[str, Any]) -> list[float]:
    """The ``other_cpu_util`` of every measurement of a run (CPUs' worth of work that was not ours)."""
    found: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            v = x.get("other_cpu_util")
            if isinstance(v, int | float):
                found.append(float(v))
            for k, y in x.items():
                if k != "other_cpu_util":
                    walk(y)
        elif isinstance(x, list):
            for y in x:
                walk(y)

    walk(results.get("scenarios", {}))
    return found


def shared_machine_note(results: Mapping[str, Any]) -> str:
    """A sentence for the report when other work ran on the machine during the run ("" otherwise)."""
    others = other_load(results)
    load = (results.get("machine") or {}).get("loadavg_at_start")
    busy = bool(others) and statistics.median(others) >= 0.1
    if not busy and not (load and load[0] >= 0.5):
        return ""
    med = f"{statistics.median(others):.0%}" if others else "-"
    top = f"{max(others):.0%}" if others else "-"
    return (f"**The machine was shared**: other work ran during this run (load average {load[0]:.2f} at the "
            f"start; during the measurements, CPU time not ours: median {med} of a CPU, at most {top}). "
            "Throughput per CPU-second is the least affected figure; req/s and the latency tails are noisier "
            "than on a quiet machine." if load else "**The machine was shared** during this run.")


def _first_line(v: Any) -> str:
    return str(v or "").splitlines()[0][:200] if v else ""


def _cpus(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _latency_section(lat: Mapping[str, Any] | None) -> list[str]:
    if not lat:
        return []
    out = ["## Latency, open loop (scenario 1's request)", ""]
    if lat.get("status") != "ok":
        return out + [f"Failed: {_first_line(lat.get('reason'))}", ""]
    sat = lat["saturation_rps"]
    out += [f"Upstream: {lat.get('upstream', 'the mock')}. Saturation (wrk, closed loop; from "
            f"{lat['saturation_source']}): gateway {_n(sat.get('gateway'))} req/s, nginx "
            f"{_n(sat.get('nginx'))} req/s. Each target runs at the given fractions of its own saturation; "
            "nginx also runs at the gateway's rates, which gives the added latency.", ""]
    rows = []
    check = lat.get("generator_check")
    points = list(lat.get("points", []))
    if check:
        points.append(dict(check, target="generator check", relative_to="-", fraction=None))
    for p in points:
        label = (f"{p['fraction']:.0%} of {p['relative_to']}" if p.get("fraction") is not None
                 else "nginx static")
        if "skipped" in p:
            rows.append([p["target"], label, _n(p["offered_rps"]), *["-"] * 11, f"skipped: {p['skipped']}"])
            continue
        lt = p["latency_ms"]
        rows.append([p["target"], label, _n(p["offered_rps"]), _n(p["achieved_rps"]), _fms(lt["p50"]),
                     _fms(lt["p90"]), _fms(lt["p99"]), _fms(lt["p99.9"]), _fms(lt["max"]),
                     _fms(p["lag_ms"]["p99"]), _pct(p.get("server_cpu_util")), _pct(p.get("load_cpu_util")),
                     _pct(p.get("other_cpu_util")), str(p["errors"]), p.get("caveat") or "ok"])
    out += _table(["target", "load", "offered req/s", "achieved", "p50", "p90", "p99", "p99.9", "max",
                   "send lag p99", "srv CPU", "load CPU", "other CPU", "errors", "valid"], rows,
                  "llrrrrrrrrrrrrl")
    out += [""]
    arows = [[f"{float(f):.0%} of gateway saturation", _n(a["offered_rps"]), _fms_signed(a["p50"]),
              _fms_signed(a["p90"]), _fms_signed(a["p99"]), _fms_signed(a["p99.9"]),
              "ok" if not _pair_caveats(lat, float(f)) else "no: " + _pair_caveats(lat, float(f))]
             for f, a in lat.get("added_ms", {}).items()]
    out += ["Added latency (gateway minus nginx at the same offered load):", "",
            *_table(["load", "req/s", "p50", "p90", "p99", "p99.9", "valid"], arows, "lrrrrrl"), ""]
    out += ["*send lag*: how late the generator noticed a request was due (its own contribution). "
            "*other CPU*: CPU time of everything but the servers, the upstream and the generator, over the "
            "wall time (other work on the machine, kernel work charged to no process). "
            "*load CPU*: the mock and the generator over the load CPUs; near 100% the load side queues, "
            "and the percentiles of both targets grow for that reason.", ""]
    return out


def _streams_section(st: Mapping[str, Any] | None) -> list[str]:
    if not st:
        return []
    out = ["## Open streams (scenario 5)", ""]
    if st.get("status") != "ok":
        return out + [f"Failed: {_first_line(st.get('reason'))}", ""]
    rows = []
    for name, t in st["targets"].items():
        rows.append([name, f"{t['open']:,} / {t['requested']:,}", f"{t.get('open_at_release', t['open']):,}",
                     f"{t['idle_rss_kb'] / 1024:.1f} MB", f"{t['open_rss_kb'] / 1024:.1f} MB",
                     "-" if t.get("kb_per_stream") is None else f"{t['kb_per_stream']:.1f} KB",
                     f"{t.get('open_seconds', 0):.1f} s", _pct(t.get("server_cpu_util_while_open"))])
    out += [f"{st['streams']:,} streams, each a chunk every {st['chunk_delay_ms']} ms from the mock "
            f"(`!mock chunk_delay_ms=…`), opened by one asyncio client and held while the worker's RSS is "
            "read from `/proc` (gateway: the worker; nginx: the worker process). Per stream = (RSS open - "
            "RSS idle) / open streams.", "",
            *_table(["target", "open / asked", "still open at release", "idle RSS", "RSS while open",
                     "per stream", "time to open", "srv CPU while open"], rows), ""]
    if st.get("ratio_kb_per_stream") is not None:
        out += [f"Gateway/nginx memory per stream: {_fx(st['ratio_kb_per_stream'])}.", ""]
    return out


def _scaling_section(sc: Mapping[str, Any] | None, m: Mapping[str, Any]) -> list[str]:
    if not sc:
        return []
    out = ["## Scaling, 1 against 2 workers (scenario 6)", ""]
    if sc.get("status") != "ok":
        return out + [f"Failed: {_first_line(sc.get('reason'))}", ""]
    rows = []
    for w, run in sc["runs"].items():
        g, n = run["targets"]["gateway"], run["targets"]["nginx"]
        rows.append([w, _n(g["median_rps"]), _n(n["median_rps"]), _fx(run["ratios"]["rps"]),
                     _n(g["median_req_per_cpu_s"]), _n(n["median_req_per_cpu_s"]),
                     f"{_pct(g['median_server_cpu_util'])} / {_pct(n['median_server_cpu_util'])}",
                     str(g["error_total"] + n["error_total"])])
    two = sc["two_over_one"]
    shared = sc.get("shared_cpus")
    where = (f"servers on CPUs {_cpus(sc['server_cpus'])}, load on CPUs {_cpus(sc['load_cpus'])}"
             + (f": **shared** (a {m.get('cpus_available')}-CPU machine: wrk and the mock take their share "
                "of the same cores, so two workers cannot double anything)" if shared else ""))
    out += [f"Small chat completion; {where}; the mock runs 2 processes in both runs.", "",
            *_table(["workers", "gw req/s", "nginx req/s", "req/s ratio", "gw req/CPU-s", "nginx req/CPU-s",
                     "srv CPU gw / nginx", "errors"], rows), "",
            f"Two workers over one: gateway {_fx(two['gateway']['rps'])} req/s, "
            f"nginx {_fx(two['nginx']['rps'])} req/s.", ""]
    return out


def _soak_section(so: Mapping[str, Any] | None) -> list[str]:
    if not so:
        return []
    out = ["## Soak (scenario 7)", ""]
    if so.get("status") != "ok":
        return out + [f"Failed: {_first_line(so.get('reason'))}", ""]
    out += [f"{so['requests']:,} requests (mix: {', '.join(so['mix'])}) in {so['seconds']:g} s through one "
            f"gateway worker, in wrk segments; worker RSS read after each segment.", "",
            *_table(["RSS at start", f"after warm-up ({so['rss_warm_at_requests']:,} req)", "at the end",
                     "growth", "errors", "req/CPU-s"],
                    [[f"{so['rss_start_kb'] / 1024:.1f} MB", f"{so['rss_warm_kb'] / 1024:.1f} MB",
                      f"{so['rss_end_kb'] / 1024:.1f} MB", _pct_signed(so["rss_growth"]),
                      str(so["error_total"]), _n(so.get("req_per_cpu_s"))]], "rrrrrr"), ""]
    return out


def _limits_section(lim: Mapping[str, Any] | None) -> list[str]:
    if not lim:
        return []
    out = ["## Limits: shared-state calls per admitted request (scenario 8)", ""]
    if lim.get("status") != "ok":
        return out + [f"Failed: {_first_line(lim.get('reason'))}", ""]
    rows = []
    for r in lim["runs"]:
        leases = r["leases"]
        cpr, own = r.get("calls_per_request"), r.get("gateway_calls_per_request")
        rows.append([
            _one_of(r["workers"]), f"{r['rate_rps']:.1f}", f"{r['admitted']:,}", f"{r['calls']:,}",
            "-" if cpr is None else f"**{cpr:.4f}**", "-" if own is None else f"{own:.4f}",
            f"{leases['granted']:,}", "-" if leases.get("median") is None else f"{leases['median']:g}",
            f"{leases['fair_share']:.1f}", f"{r['admitted_slow']:,}", str(r["errors"]),
        ])
    out += [f"`python -m bench.inproc --limits`: the gateway in process (fake sockets, a canned upstream "
            f"answer), API keys required and a policy of {lim['rpm']:,} requests per minute on the key's "
            "tenant, leases from the embedded shared state (the node's table file). Requests are sent open "
            "loop at the limit's rate in real time (a deployment of W workers: one worker at 1/W of it, "
            f"its leases sized for W); {lim['warmup_s']:g} s of warm-up, then {lim['measured_s']:g} s "
            "counted. Every call into the shared state is counted where the limits code makes it (its "
            f"`LeaseSource`). Target: at most {lim.get('target_calls_per_request', 0.05):g} per admitted "
            "request.", "",
            *_table(["deployment", "req/s (this worker)", "admitted", "shared-state calls", "per request",
                     "gateway's own count, per request", "leases", "median lease", "fair share",
                     "waited for the shared state", "errors"], rows), "",
            "*gateway's own count*: `LimitService.shared_calls` (its lease clients' round trips). *fair "
            "share*: the largest lease the sizing allows, one second of the limit over W. *waited*: requests "
            "admitted only after a call to the shared state (one per new lease).", ""]
    return out


# --- plots --------------------------------------------------------------------------------------------------

_COLORS = {"gateway": "#1f77b4", "nginx": "#7f7f7f"}


def make_plots(results: Mapping[str, Any], out_dir: Path, *, dpi: int = 80) -> list[str]:
    """PNG files (names) drawn into ``out_dir``; none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed (pip install matplotlib): no plots", file=sys.stderr)
        return []
    sc = results.get("scenarios", {})
    made = []
    drawers: tuple[tuple[str, Callable[[Any, Mapping[str, Any]], bool]], ...] = (
        ("throughput.png", _plot_throughput), ("latency.png", _plot_latency),
        ("scaling.png", _plot_scaling), ("soak.png", _plot_soak),
    )
    for name, draw in drawers:
        fig = plt.figure(figsize=(8, 4.2))
        try:
            if draw(fig, sc):
                fig.tight_layout()
                fig.savefig(out_dir / name, dpi=dpi)
                made.append(name)
        finally:
            plt.close(fig)
    return made


def _plot_throughput(fig: Any, sc: Mapping[str, Any]) -> bool:
    cases = []
    for name in ("chat", "prompts", "stream", "local"):
        x = sc.get(name)
        if x and x.get("status") == "ok":
            cases += [c for c in x.get("cases", []) if "targets" in c]
    if not cases:
        return False
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(cases))
    w = 0.38
    for k, target in enumerate(("gateway", "nginx")):
        vals = [c["targets"][target]["median_req_per_cpu_s"] / 1000 for c in cases]
        ax.bar([x + (k - 0.5) * w for x in xs], vals, w, label=target if target == "gateway" else
               "nginx (proxy_pass, or static return for 404/401/429)", color=_COLORS[target])
    for x, c in zip(xs, cases, strict=True):
        top = max(c["targets"][t]["median_req_per_cpu_s"] for t in ("gateway", "nginx")) / 1000
        ax.annotate(_fx(c["ratios"]["req_per_cpu_s"]), (x, top), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 2), textcoords="offset points")
    chat = next((c for c in cases if c["name"] == "chat"), None)
    if chat is not None and any(c.get("nginx_path") != c.get("path") for c in cases):
        ax.axhline(chat["targets"]["nginx"]["median_req_per_cpu_s"] / 1000, color=_COLORS["nginx"],
                   linestyle=":", linewidth=1, label="nginx proxy_pass, chat (the bar of 404/401/429)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([c["name"] for c in cases], fontsize=9)
    ax.set_ylabel("thousand requests per CPU-second")
    ax.set_title("Throughput per core, gateway against nginx (gateway/nginx above each pair)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax.margins(y=0.12)
    return True


def _plot_latency(fig: Any, sc: Mapping[str, Any]) -> bool:
    lat = sc.get("latency")
    if not lat or lat.get("status") != "ok":
        return False
    measured = [p for p in lat.get("points", []) if "skipped" not in p]
    if not measured:
        return False
    from matplotlib.ticker import FuncFormatter

    ax = fig.add_subplot(1, 1, 1)
    styles = {"p50": ("o", "-"), "p99": ("s", "--"), "p99.9": ("^", ":")}
    for target in ("gateway", "nginx"):
        pts = sorted((p for p in measured if p["target"] == target), key=lambda p: p["offered_rps"])
        if not pts:
            continue
        xs = [p["offered_rps"] for p in pts]
        for q, (marker, line) in styles.items():
            ys = [p["latency_ms"][q] for p in pts]
            ax.plot(xs, ys, linestyle=line, color=_COLORS[target], linewidth=1, label=f"{target} {q}")
            # filled markers: valid points; hollow: the load side or the machine interfered (see the table)
            for x, y, p in zip(xs, ys, pts, strict=True):
                ax.plot([x], [y], marker=marker, markersize=5, color=_COLORS[target],
                        markerfacecolor="none" if p.get("caveat") else _COLORS[target])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_xlabel("offered load, requests per second (open loop)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("Open-loop latency against offered load, small chat (hollow: not valid, see the table)",
                 fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    return True


def _plot_scaling(fig: Any, sc: Mapping[str, Any]) -> bool:
    x = sc.get("scaling")
    if not x or x.get("status") != "ok":
        return False
    ax = fig.add_subplot(1, 1, 1)
    workers = list(x["runs"])
    w = 0.38
    for k, target in enumerate(("gateway", "nginx")):
        vals = [x["runs"][n]["targets"][target]["median_rps"] / 1000 for n in workers]
        ax.bar([i + (k - 0.5) * w for i in range(len(workers))], vals, w, label=target, color=_COLORS[target])
    ax.set_xticks(range(len(workers)))
    ax.set_xticklabels([f"{n} worker(s)" for n in workers])
    ax.set_ylabel("thousand requests per second")
    ax.set_title("Scaling, small chat completion" + (" (servers share the CPUs with the load)"
                                                     if x.get("shared_cpus") else ""), fontsize=10)
    ax.legend(fontsize=8)
    return True


def _plot_soak(fig: Any, sc: Mapping[str, Any]) -> bool:
    so = sc.get("soak")
    if not so or so.get("status") != "ok" or not so.get("samples"):
        return False
    ax = fig.add_subplot(1, 1, 1)
    samples = so["samples"]
    ax.plot([s["requests"] / 1000 for s in samples], [s["rss_kb"] / 1024 for s in samples], "o-",
            color=_COLORS["gateway"], markersize=3)
    ax.axvline(so["rss_warm_at_requests"] / 1000, color="#999999", linestyle=":", label="end of warm-up")
    ax.set_xlabel("thousand requests")
    ax.set_ylabel("worker RSS, MB")
    ax.set_ylim(0, max(s["rss_kb"] for s in samples) / 1024 * 1.2)
    ax.set_title(f"Soak: gateway worker RSS over {so['requests']:,} requests", fontsize=10)
    ax.legend(fontsize=8)
    return True


def main(argv: list[str] | None = None) -> int:
    """Render ``report.md`` and the plots again from a ``results.json`` (and evaluate the bar again)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    results = json.loads(path.read_text())
    results["bar"] = evaluate_bar(results.get("scenarios", {}))  # derived: evaluated again, as the plots
    results["plots"] = make_plots(results, path.parent)
    path.write_text(json.dumps(results, indent=1) + "\n")
    (path.parent / "report.md").write_text(render_markdown(results, results["plots"]))
    print(path.parent / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
