"""``tokenflow serve``: a local web page over a search index, with why each result matched.

```python
from tokenflow.serve import create_app          # needs the serve extra (fastapi, uvicorn)
app = create_app("store/index", model="weights/tiny", aligner_names=["tokenflow", "max-avg"])
# uvicorn.run(app, host="127.0.0.1", port=8000), or: tokenflow serve --index store/index
```

:class:`Engine` is the same work without HTTP (search with one or two plans, explanations);
:mod:`tokenflow.serve.app` documents the JSON API and the safety defaults.
"""

from __future__ import annotations

from .engine import DEFAULT_PLANS, GLOBAL, Engine, Limits

__all__ = ["DEFAULT_PLANS", "GLOBAL", "Engine", "Limits", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # imports fastapi: only when asked for
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
