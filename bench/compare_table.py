#!/usr/bin/env python3
"""Results table of bench/compare: medians per server and Starling/peer ratios.

usage: compare_table.py OUT_DIR

Reads OUT_DIR/meta.txt and OUT_DIR/runs/SCENARIO/SERVER.REP.{json,rc} (and SERVER.skip),
writes OUT_DIR/RESULTS.md and OUT_DIR/summary.json. Python 3 standard library only.

Exit status: 2 if any run reported lost or duplicated messages (or exactly-once violated),
else 0.
"""
import json
import os
import re
import statistics
import sys

SERVER_TITLES = {"starling": "Starling", "prosody": "Prosody", "ejabberd": "ejabberd"}


def read_meta(out):
    meta = {}
    with open(os.path.join(out, "meta.txt")) as f:
        for line in f:
            if ": " in line:
                k, v = line.rstrip("\n").split(": ", 1)
                meta[k] = v
    params = {}
    for kv in meta.get("params", "").split():
        if "=" in kv:
            k, v = kv.split("=", 1)
            params[k] = v
    meta["_params"] = params
    meta["_servers"] = meta.get("servers", "").split()
    meta["_scenarios"] = meta.get("scenarios", "").split()
    return meta


class Run:
    def __init__(self, scen, server, rep, rc, js, err_tail):
        self.scen, self.server, self.rep, self.rc, self.js = scen, server, rep, rc, js
        self.err_tail = err_tail

    @property
    def ok(self):
        return self.rc == "0"

    @property
    def usable(self):
        # the generator finished and wrote its figures (status 1 = problems were reported,
        # 2 = exactly-once violated: the figures still exist and are shown, flagged)
        return self.js is not None and self.rc in ("0", "1", "2")

    def metric(self, key):
        if self.js is None:
            return None
        m = self.js.get("metrics", {})
        v = m.get(key, self.js.get(key))
        if isinstance(v, bool) or v is None:
            return v
        try:
            return float(v)
        except (TypeError, ValueError):
            return None


def load_runs(out):
    runs, skips = {}, {}
    base = os.path.join(out, "runs")
    if not os.path.isdir(base):
        return runs, skips
    for scen in sorted(os.listdir(base)):
        d = os.path.join(base, scen)
        for name in sorted(os.listdir(d)):
            m = re.fullmatch(r"([a-z]+)\.skip", name)
            if m:
                with open(os.path.join(d, name)) as f:
                    skips[(scen, m.group(1))] = f.read().strip()
                continue
            m = re.fullmatch(r"([a-z]+)\.(\d+)\.rc", name)
            if not m:
                continue
            server, rep = m.group(1), int(m.group(2))
            with open(os.path.join(d, name)) as f:
                rc = f.read().strip()
            js = None
            jpath = os.path.join(d, f"{server}.{rep}.json")
            if os.path.exists(jpath):
                try:
                    with open(jpath) as f:
                        js = json.load(f)
                except (OSError, ValueError):
                    js = None
            err_tail = ""
            epath = os.path.join(d, f"{server}.{rep}.err")
            if os.path.exists(epath):
                with open(epath, errors="replace") as f:
                    lines = [l.strip() for l in f.read().replace("\r", "\n").split("\n") if l.strip()]
                err_tail = lines[-1] if lines else ""
            runs.setdefault((scen, server), []).append(Run(scen, server, rep, rc, js, err_tail))
    return runs, skips


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    a = abs(v)
    if a >= 999.5:
        return f"{v:,.0f}"
    if a >= 99.95:
        return f"{v:.0f}"
    if a >= 9.995:
        return f"{v:.1f}"
    if a >= 0.9995:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def chat_per_core(r):
    d, pct = r.metric("delivered_per_s"), r.metric("server_cpu_chat_pct")
    if d is None or not pct:
        return None
    return d / (pct / 100.0)


def lost_dup(r):
    """(lost, duplicated) of one chat or MUC run, None when the run has no such figures."""
    if r.scen.startswith("chat"):
        lost, dup = r.metric("missing"), r.metric("duplicates")
    elif r.scen.startswith("muc"):
        lost, dup = r.metric("lost"), r.metric("duplicates")
    else:
        return None
    if lost is None and dup is None:
        return None
    return (lost or 0, dup or 0)


def rows_for(meta):
    p = meta["_params"]
    S, P, W = p.get("sessions", "?"), p.get("pairs", "?"), p.get("window", "?")
    rate, lu = p.get("rate", "?"), p.get("login_users", "?")
    lc = p.get("login_concurrency", "?")
    im = {"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256"}.get(p.get("idle_mech", "plain"), "?")
    rows = [
        ("Memory", None),
        (f"RSS per idle session, plaintext + {im} ({S} sessions)", "idle-plain", "rss_per_session_bytes", "bytes", "lower"),
        (f"RSS per idle session, STARTTLS + {im} ({S} sessions)", "idle-tls", "rss_per_session_bytes", "bytes", "lower"),
        (f"RSS per idle session, plaintext + SCRAM-SHA-256 ({S} sessions)", "idle-scram", "rss_per_session_bytes", "bytes", "lower"),
        ("Logins", None),
        (f"Login rate opening idle sessions, plaintext + {im} (200 in flight)", "idle-plain", "login_rate_per_s", "logins/s", "higher"),
        (f"Server CPU per login, plaintext + {im} (idle ramp)", "idle-plain", "server_cpu_per_login_us", "µs", "lower"),
        (f"Login rate opening idle sessions, STARTTLS + {im}", "idle-tls", "login_rate_per_s", "logins/s", "higher"),
        (f"Server CPU per login, STARTTLS + {im} (idle ramp)", "idle-tls", "server_cpu_per_login_us", "µs", "lower"),
        ("Server CPU per login, plaintext + SCRAM-SHA-256 (idle ramp)", "idle-scram", "server_cpu_per_login_us", "µs", "lower"),
        (f"Sustained login rate, SASL PLAIN ({lu} accounts, {lc} in flight)", "login-plain", "logins_per_sec", "logins/s", "higher"),
        ("Server CPU per login, SASL PLAIN", "login-plain", "server_cpu_us_per_login", "µs", "lower"),
        (f"Sustained login rate, SCRAM-SHA-256 ({lu} accounts, {lc} in flight)", "login-scram", "logins_per_sec", "logins/s", "higher"),
        ("Server CPU per login, SCRAM-SHA-256", "login-scram", "server_cpu_us_per_login", "µs", "lower"),
        ("One-to-one chat", None),
        (f"Chat delivered, max throughput ({P} pairs, window {W})", "chat-max", "delivered_per_s", "msgs/s", "higher"),
        ("Chat msgs/s per server core (delivered ÷ server CPU share)", "chat-max", chat_per_core, "msgs/s/core", "higher"),
        ("Server CPU per chat message", "chat-max", "server_cpu_per_message_us", "µs", "lower"),
        ("Chat latency p99 at max throughput", "chat-max", "latency_p99_ms", "ms", "lower"),
        ("Server CPU during max throughput", "chat-max", "server_cpu_chat_pct", "% of a core", None),
        (f"Chat delivered at a fixed {rate} msgs/s", "chat-rate", "delivered_per_s", "msgs/s", "higher"),
        (f"Chat latency p50 at {rate} msgs/s", "chat-rate", "latency_p50_ms", "ms", "lower"),
        (f"**Chat latency p99 at {rate} msgs/s** (target ≤ 1 ms)", "chat-rate", "latency_p99_ms", "ms", "lower"),
    ]
    muc = sorted((s for s in meta["_scenarios"] if s.startswith("muc-")), key=lambda s: int(s[4:]))
    if muc:
        rows.append(("Group chat (MUC, " + p.get("muc_senders", "?") + " sender(s))", None))
    for s in muc:
        k = s[4:]
        rows += [
            (f"MUC {k} occupants: time for all to join", s, "join_all_secs", "s", "lower"),
            (f"MUC {k} occupants: delivered", s, "delivered_per_sec", "msgs/s", "higher"),
            (f"MUC {k} occupants: delivered per server core", s, "delivered_per_server_core_sec", "msgs/s/core", "higher"),
            (f"MUC {k} occupants: latency p99", s, "latency_p99_ms", "ms", "lower"),
        ]
    rows += [
        ("Generator and machine", None),
        ("Generator CPU opening idle sessions (plaintext)", "idle-plain", "generator_cpu_login_pct", "% of a core", None),
        ("Generator CPU during max chat throughput", "chat-max", "generator_cpu_chat_pct", "% of a core", None),
        ("Other processes during max chat throughput (noise)", "chat-max", "other_cpu_chat_pct", "% of a core", None),
    ]
    return rows


def cell(runs, skips, scen, server, getter):
    """(text, median or None, values)"""
    if (scen, server) in skips and (scen, server) not in runs:
        return "n/a", None, []
    rs = runs.get((scen, server), [])
    if not rs:
        return "—", None, []
    vals, flagged = [], False
    for r in rs:
        if not r.usable:
            continue
        v = getter(r) if callable(getter) else r.metric(getter)
        if isinstance(v, bool) or v is None:
            continue
        vals.append(v)
        flagged |= not r.ok
    if not vals:
        reasons = sorted({r.rc if r.rc not in ("0", "1", "2") else f"status {r.rc}" for r in rs})
        return "failed (" + ", ".join(reasons) + ")", None, []
    med = statistics.median(vals)
    text = fmt(med)
    if len(vals) < len(rs):
        text += f" ({len(vals)}/{len(rs)} runs)"
    if flagged:
        text += " †"
    return text, med, vals


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def render_compare(out, meta, runs, skips):
    servers = meta["_servers"]
    peers = [s for s in ("prosody", "ejabberd") if s in servers and "starling" in servers]
    rows = rows_for(meta)
    lines = []
    L = lines.append
    L("# Starling vs Prosody vs ejabberd")
    L("")
    L(f"Generated by `bench/compare` on {meta.get('date', '?')}. Medians of "
      f"{meta.get('repeats', '?')} run(s) per cell, each run against a freshly started server.")
    L("")
    L("| | |")
    L("| --- | --- |")
    for k, title in (("cpu", "CPU"), ("cores", "Cores"), ("memory", "Memory"), ("kernel", "Kernel"),
                     ("os", "OS"), ("pinning", "Pinning"), ("starling", "Starling"),
                     ("starling-bench", "starling-bench"), ("prosody", "Prosody"),
                     ("ejabberd", "ejabberd"), ("accounts", "Accounts per server"),
                     ("params", "Parameters")):
        if k in meta:
            L(f"| {title} | {meta[k]} |")
    L("")
    head = ["Metric", "Unit", "Better"] + [SERVER_TITLES[s] for s in servers]
    head += [f"Starling/{SERVER_TITLES[p]}" for p in peers]
    L("| " + " | ".join(head) + " |")
    L("| " + " | ".join(["---", "---", "---"] + ["---:"] * (len(head) - 3)) + " |")
    summary = []
    for row in rows:
        if row[1] is None:
            L("| **" + row[0] + "** |" + " |" * (len(head) - 1))
            continue
        label, scen, getter, unit, better = row
        cells, meds = [], {}
        for s in servers:
            text, med, vals = cell(runs, skips, scen, s, getter)
            cells.append(text)
            meds[s] = med
        # ratios only where a direction is defined: (info) rows are context
        rats = {p: ratio(meds.get("starling"), meds.get(p)) if better else None for p in peers}
        rat_txt = [f"{rats[p]:.2f}×" if rats[p] is not None else "—" for p in peers]
        L("| " + " | ".join([label, unit, better or "(info)"] + cells + rat_txt) + " |")
        summary.append({"metric": label.replace("**", ""), "scenario": scen, "unit": unit,
                        "better": better, "median": meds,
                        "ratio": {f"starling/{p}": rats[p] for p in peers}})
    # correctness: totals over every run
    bad = False
    ld_cells, fail_cells = [], []
    for s in servers:
        lost = dup = 0
        seen = False
        failed_logins = 0
        for (scen, srv), rs in runs.items():
            if srv != s:
                continue
            for r in rs:
                x = lost_dup(r)
                if x is not None:
                    seen = True
                    lost += x[0]
                    dup += x[1]
                if r.rc == "2" or r.metric("exactly_once") is False:
                    bad = True
                for k in ("sessions_failed", "failed"):
                    v = r.metric(k)
                    if isinstance(v, float):
                        failed_logins += v
        if lost or dup:
            bad = True
        ld_cells.append(f"{int(lost):,} / {int(dup):,}" if seen else "—")
        fail_cells.append(f"{int(failed_logins):,}")
    L("| **Correctness (totals over all runs)** |" + " |" * (len(head) - 1))
    L("| " + " | ".join(["Messages lost / duplicated (chat and MUC)", "messages", "0"] + ld_cells + ["—"] * len(peers)) + " |")
    L("| " + " | ".join(["Failed logins", "logins", "0"] + fail_cells + ["—"] * len(peers)) + " |")
    L("")
    L("**Reading the ratios.** Starling/X = Starling's median ÷ X's median. On a row where "
      "*higher* is better a ratio above 1 means Starling is ahead; where *lower* is better "
      "(memory, CPU per operation, latency, join time) a ratio below 1 means Starling is "
      "ahead. (info) rows are context, not scores. n/a: the server cannot run the scenario; "
      "†: at least one run reported a problem (see below); failed: no run produced figures.")
    L("")
    L("CPU figures are per process from /proc (utime+stime): Prosody is one Lua process, "
      "ejabberd one BEAM process (all schedulers), Starling one process. \"Per server core\" = "
      "delivered ÷ (server CPU ÷ one core). The generator is pinned to its own core with one "
      "worker thread; when its CPU nears 100% the figure is bounded by the generator, not "
      "the server.")
    L("")
    L("## Every run")
    L("")
    L("| Scenario | Server | Status per run | Key figure per run |")
    L("| --- | --- | --- | --- |")
    key_of = {"idle": ("rss_per_session_bytes", "B/session"), "chat": ("delivered_per_s", "msgs/s"),
              "login": ("logins_per_sec", "logins/s"), "muc": ("delivered_per_sec", "msgs/s")}
    scen_order = meta["_scenarios"]
    for scen in scen_order:
        for s in servers:
            if (scen, s) in skips and (scen, s) not in runs:
                L(f"| {scen} | {SERVER_TITLES[s]} | n/a: {skips[(scen, s)]} | |")
                continue
            rs = sorted(runs.get((scen, s), []), key=lambda r: r.rep)
            if not rs:
                continue
            key, unit = key_of.get(scen.split("-")[0], ("", ""))
            st = ", ".join("ok" if r.ok else r.rc if not r.rc.isdigit() else f"status {r.rc}" for r in rs)
            vals = ", ".join(fmt(r.metric(key)) if r.usable else "—" for r in rs)
            extra = ""
            if scen.startswith("chat"):
                extra = "; p99 ms: " + ", ".join(fmt(r.metric("latency_p99_ms")) if r.usable else "—" for r in rs)
            L(f"| {scen} | {SERVER_TITLES[s]} | {st} | {vals} {unit}{extra} |")
    problems = []
    for (scen, s), rs in sorted(runs.items()):
        for r in sorted(rs, key=lambda r: r.rep):
            if r.ok:
                continue
            detail = ""
            if r.js and r.js.get("problems"):
                detail = "; ".join(str(x) for x in r.js["problems"][:3])
            elif r.err_tail:
                detail = r.err_tail[:300]
            problems.append(f"- {scen} / {SERVER_TITLES[s]} / run {r.rep}: "
                            f"{'status ' + r.rc if r.rc.isdigit() else r.rc}"
                            + (f" — {detail}" if detail else ""))
    bound = []
    for (scen, s), rs in sorted(runs.items()):
        for key in ("generator_cpu_chat_pct", "generator_cpu_muc_pct", "generator_cpu_login_pct"):
            vals = [r.metric(key) for r in rs if r.usable]
            vals = [v for v in vals if isinstance(v, float)]
            if vals and statistics.median(vals) >= 90:
                bound.append(f"- {scen} / {SERVER_TITLES[s]}: the generator used "
                             f"{fmt(statistics.median(vals))}% of its core ({key}): the rate is "
                             "bounded by the generator; per-core and per-operation figures "
                             "still compare the servers")
                break
    if bound:
        L("")
        L("## Generator-bound runs")
        L("")
        lines.extend(bound)
    if problems:
        L("")
        L("## Problems")
        L("")
        lines.extend(problems)
    L("")
    L(f"Raw results: `runs/SCENARIO/SERVER.REP.{{md,json,err,rc,cmd}}`; server logs: `logs/`.")
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"meta": {k: v for k, v in meta.items() if not k.startswith("_")},
                   "rows": summary, "lost_or_duplicated": bad}, f, indent=2)
    return bad


def render_scaling(out, meta, runs, skips):
    servers = meta["_servers"]
    points = sorted((s for s in meta["_scenarios"] if s.startswith("idle-")), key=lambda s: int(s[5:]))
    lines = []
    L = lines.append
    L("# Idle-session scaling")
    L("")
    L(f"Generated by `SCALING=1 bench/compare` on {meta.get('date', '?')}: idle sessions over "
      f"plaintext + {meta['_params'].get('idle_mech', 'plain').upper()}, each point against a "
      f"freshly started server, median of {meta.get('repeats', '?')} run(s).")
    L("")
    for k, title in (("cpu", "CPU"), ("cores", "Cores"), ("memory", "Memory"), ("kernel", "Kernel"),
                     ("pinning", "Pinning"), ("starling", "Starling"), ("prosody", "Prosody"),
                     ("ejabberd", "ejabberd")):
        if k in meta and (k not in SERVER_TITLES or k in servers):
            L(f"- {title}: {meta[k]}")
    L("")
    head = ["Sessions"]
    for s in servers:
        t = SERVER_TITLES[s]
        head += [f"{t} RSS/session (bytes)", f"{t} server CPU/login (µs)", f"{t} login rate (/s)",
                 f"{t} failed"]
    L("| " + " | ".join(head) + " |")
    L("| " + " | ".join(["---:"] * len(head)) + " |")
    summary = []
    for p in points:
        row = [p[5:]]
        entry = {"sessions": int(p[5:])}
        for s in servers:
            for key in ("rss_per_session_bytes", "server_cpu_per_login_us", "login_rate_per_s",
                        "sessions_failed"):
                text, med, _ = cell(runs, skips, p, s, key)
                row.append(text)
                entry[f"{s}.{key}"] = med
        L("| " + " | ".join(row) + " |")
        summary.append(entry)
    L("")
    L("RSS/session = (server RSS with all sessions open − RSS before) ÷ sessions; CPU/login = "
      "server CPU during the logins ÷ sessions. †: a run reported a problem.")
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"meta": {k: v for k, v in meta.items() if not k.startswith("_")},
                   "points": summary}, f, indent=2)
    return False


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 1
    out = sys.argv[1]
    meta = read_meta(out)
    runs, skips = load_runs(out)
    if meta.get("mode") == "scaling":
        bad = render_scaling(out, meta, runs, skips)
    else:
        bad = render_compare(out, meta, runs, skips)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
