"""The demo's budgets, tasks and methods: data, not code.

The default budget was chosen so that the global baseline's validation R@1 has stopped rising
on ``scenes`` from scratch (learning curves in benchmarks/RESULTS.md, "The demo's budget"), and
every method gets the same one. ``quick`` is a smoke run with a budget too small to compare
anything.
"""

from __future__ import annotations

__all__ = ["ALL_METHODS", "BUDGETS", "METHODS", "PROTOCOLS", "QUICK_METHODS", "SCENES", "TASKS", "budget", "label"]

#: Every method the demo knows: "global" is the global similarity alone; the others add a plan,
#: except "cs-aligner", which adds the Cauchy-Schwarz divergence term to the global loss.
ALL_METHODS = ("global", "uniform", "max-avg", "scan", "emd", "sinkhorn", "tokenflow", "omit", "wti", "xclip",
               "mpa", "dive", "cs-aligner")
#: The default rows: the global baseline, FILIP's max-avg, SCAN and TokenFlow. SCAN is
#: TokenFlow's plan with the eq-14 weights d and e set to 1, so the gap between the two is the
#: effect of those weights.
METHODS = ("global", "max-avg", "scan", "tokenflow")
QUICK_METHODS = METHODS
TASKS = ("scenes", "bindings")
#: ``scratch``: each method trains the tiny encoder from a fresh start (FILIP's claim);
#: ``finetune``: a global-loss pretraining per seed, then one fine-tune per method (the
#: TokenFlow paper's claim).
PROTOCOLS = ("scratch", "finetune")
#: scenes: 5 objects per image, one per 8-pixel cell of a 4 x 4 grid, filling the cell; each
#: caption names 2 of them and nothing else.
SCENES = {"objects": 5, "named": 2, "placement": "cell", "templates": "plain"}

# Per (task, seed): the task's split sizes (train, val, test) and epochs, the same for every
# method and both protocols; the pretraining split (train, val) and its epochs (finetune only).
BUDGETS = {
    "default": {"sizes": (3000, 250, 500), "epochs": 12, "pretrain": (6000, 300), "pretrain_epochs": 8,
                "batch_size": 64, "lr": 1e-3, "lr_finetune": 3e-4},
    "quick": {"sizes": (400, 100, 200), "epochs": 3, "pretrain": (600, 60), "pretrain_epochs": 2,
              "batch_size": 32, "lr": 1e-3, "lr_finetune": 3e-4},
}
VIDEO_FRAMES = 6


def budget(quick: bool, videos: bool = False) -> dict:
    """The budget; videos (6 frames each) get a quarter of the images' training items."""
    p = dict(BUDGETS["quick" if quick else "default"])
    if videos:
        p["pretrain"] = (p["pretrain"][0] // 4, p["pretrain"][1] // 2)
        p["sizes"] = (p["sizes"][0] // 4, p["sizes"][1] // 2, p["sizes"][2] // 4)
    return p


def label(spec: str) -> str:
    """A run spec's row name: the plan and its loss suffix, without hyperparameters
    (``tokenflow:lam=5+sigmoid`` -> ``tokenflow+sigmoid``)."""
    from ..train.ablate import method_loss, parse_method

    loss = method_loss(spec)[1]
    return parse_method(spec)[0] + (f"+{loss}" if loss else "")
