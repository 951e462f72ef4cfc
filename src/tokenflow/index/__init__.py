"""Search at scale (ColBERT's shape): encode a collection once into a sharded feature store,
build a FAISS index over its global features, then search: a FAISS shortlist re-ranked by any
aligner.

```python
store = encode_store(backbone, split, "store/")          # or StoreWriter / write_store
index_dir = Indexer("flat").index("store/")              # store/index/
results = Searcher(index_dir, model=backbone, aligner=get_aligner("tokenflow")).search(["a red cube"], k=10)
searcher = Searcher.from_model(index_dir, "runs/x/best")  # a trained folder: its plan, weights, w_global, w_fine
```
"""

from .encode import backbone_fingerprint, encode_store
from .shortlist import IndexSettings, Indexer, load_index
from .searcher import Searcher, SearchResult
from .store import FeatureStore, StoreWriter, write_store

__all__ = ["FeatureStore", "IndexSettings", "Indexer", "SearchResult", "Searcher", "StoreWriter",
           "backbone_fingerprint", "encode_store", "load_index", "write_store"]
