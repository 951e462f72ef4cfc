"""The demo's tables: mean ± std over seeds per method, and each method's paired difference
from ``global`` on the same seeds (:mod:`tokenflow.eval.paired`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ..eval.paired import paired

__all__ = ["format_seed_table", "mean_std", "results_markdown", "summarise"]

KEYS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _hp(spec: str) -> str:
    from ..train.ablate import method_loss

    return method_loss(spec)[0].partition(":")[2].replace(",", ", ") or "–"


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per (task, protocol, method), in row order: mean and sample std over seeds of every
    metric, and the paired difference of t2v R@1 (and hard-negative accuracy) from ``global``."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r.get("protocol", "scratch"), r["method"]), []).append(r)
    out = []
    for (task, protocol, method), rs in groups.items():
        s = {"task": task, "protocol": protocol, "method": method, "seeds": [r["seed"] for r in rs],
             "spec": rs[0].get("spec", method), "hparams": _hp(rs[0].get("spec", method))}
        for d in ("t2v", "v2t"):
            s[d] = {k: mean_std([r[d][k] for r in rs]) for k in KEYS}
        if all("pointing" in r for r in rs):
            s["pointing"] = {w: mean_std([r["pointing"][w]["accuracy"] for r in rs]) for w in ("flow", "abs", "plan")}
            s["pointing_chance"] = mean_std([r["pointing"]["chance"] for r in rs])
        if all("hard_negatives" in r for r in rs):
            s["hard_negatives"] = mean_std([r["hard_negatives"]["accuracy"] for r in rs])
        s["train_s"] = mean_std([r["train_s"] for r in rs])
        base = groups.get((task, protocol, "global"))
        if base and method != "global":
            s["paired_r1"] = paired({r["seed"]: r["t2v"]["R@1"] for r in rs},
                                    {r["seed"]: r["t2v"]["R@1"] for r in base}).to_dict()
            if "hard_negatives" in s and all("hard_negatives" in r for r in base):
                s["paired_hard_negatives"] = paired({r["seed"]: r["hard_negatives"]["accuracy"] for r in rs},
                                                    {r["seed"]: r["hard_negatives"]["accuracy"] for r in base}
                                                    ).to_dict()
        out.append(s)
    return out


def _pm(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def _se(p: dict) -> str:
    return "–" if p["se"] != p["se"] else f"{p['se']:.1f}"  # NaN with one seed


def _paired_cell(p: dict | None) -> list[str]:
    if not p:  # None, or {}: no paired comparison (the baseline's own row)
        return ["–", "–"]
    return [f"{p['mean']:+.1f} ± {_se(p)} ({p['positive']}/{p['n']} seeds > 0)", p["verdict"]]


def format_seed_table(summary: Sequence[dict], task: str, protocol: str = "scratch", title: str = "") -> str:
    """One (task, protocol): per method its hyperparameters, t2v R@1 (mean ± std), the paired
    difference from global (mean ± standard error, seeds positive) and its verdict, v2t R@1,
    hard-negative accuracy, pointing under the three readings, and training seconds."""
    rows = [s for s in summary if s["task"] == task and s["protocol"] == protocol]
    point = any("pointing" in s for s in rows)
    hard = any("hard_negatives" in s for s in rows)
    head = ["method", "hp", "t2v R@1", "Δ t2v R@1 vs global (paired)", "verdict", "t2v R@5", "v2t R@1"]
    head += ["hard neg. %", "Δ hard neg. (paired)"] if hard else []
    head += ["pointing T·c %", "pointing |T·c| %", "pointing T %"] if point else []
    head += ["train s"]
    lines = [title, ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        cells = [s["method"], s["hparams"], _pm(s["t2v"]["R@1"]), *_paired_cell(s.get("paired_r1")),
                 _pm(s["t2v"]["R@5"]), _pm(s["v2t"]["R@1"])]
        if hard:
            cells += [_pm(s["hard_negatives"]) if "hard_negatives" in s else "–",
                      _paired_cell(s.get("paired_hard_negatives"))[0]]
        if point:
            cells += ([_pm(s["pointing"][w]) for w in ("flow", "abs", "plan")] if "pointing" in s else ["–"] * 3)
        cells.append(f"{s['train_s'][0]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdicts(summary: Sequence[dict], task: str, protocol: str) -> str:
    """One sentence per token method under the claim rule."""
    out = []
    for s in summary:
        if (s["task"], s["protocol"]) != (task, protocol) or "paired_r1" not in s:
            continue
        p = s["paired_r1"]
        word = {"beats": "beats", "trails": "trails", "level": "is level with"}[p["verdict"]]
        out.append(f"{s['method']} {word} global on t2v R@1 ({p['mean']:+.1f} ± {_se(p)}, "
                   f"{p['positive']}/{p['n']} seeds positive).")
    return " ".join(out)


def results_markdown(meta: dict, rows: list[dict], summary: list[dict]) -> str:
    """The whole results page: one table per (task, protocol) and the verdicts under the rule."""
    seeds, videos = meta["seeds"], meta["videos"]
    md = [f"# tokenflow demo: {meta['date']}, {meta['machine']}", "",
          f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); each seed has its own data and start, shared by "
          "every method. Δ is the paired difference from `global` on the same seed: mean ± standard error, and how "
          "many seeds were positive. A method *beats* global when that mean is above twice its standard error and "
          "every seed is positive; otherwise it is *level* (or *trails*, the mirror image). hp: hyperparameters "
          "chosen on validation (tuned.json). Pointing: object words whose strongest patch, by T·c, |T·c| or T, "
          "lies in their object's box (t2v plan). Hard neg.: the true caption scores strictly above its "
          "false twin (fused score; a tie is a miss).", ""]
    for t in meta["tasks"]:
        for protocol in meta["protocols"]:
            sub = [r for r in rows if r["task"] == t and r["protocol"] == protocol]
            if not sub:
                continue
            first = sub[0]
            several = mean_std([r["texts_with_several_positives"] for r in sub if r["method"] == first["method"]])[0]
            title = (f"## {t}, {protocol}: test split of {first['test_items']} {'videos' if videos else 'images'}, "
                     f"{first['test_texts']} captions ({100 * several / first['test_texts']:.1f} % of them true of "
                     "more than one test image; all count as correct)")
            pointed = [r for r in sub if "pointing" in r]
            chance = f" Pointing chance: {pointed[0]['pointing']['chance']:.1f} %." if pointed else ""
            md += [format_seed_table(summary, t, protocol, title), _verdicts(summary, t, protocol) + chance, ""]
    return "\n".join(md)
