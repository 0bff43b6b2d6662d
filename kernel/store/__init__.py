"""The storage manager: a persistent file tree in one SQLite database, with kept versions, a
background semantic index and keyword search. Callers import from here
(``from kernel.store import StorageManager``); the modules inside own one concept each:

    db          the SQLite database: schema and its migration, connections, transactions, errors
    tree        the file tree kept in memory: Entry, path normalisation
    versions    kept versions of files: keeping, listing, reading
    index       passages (chunk_text) and the indexer threads that fill the index
    search      semantic search and keyword search over the index: Hit
    embedders   text to vectors: MiniLM, hashing
    ballast     the reserve that lets deletes work on a full disk
    manager     StorageManager: the parts together, and every change as one transaction

Imports point one way: ``manager`` uses the others; ``search`` and ``versions`` use ``db`` and
``tree``; ``index`` uses ``db`` and ``embedders``; none of them imports ``manager`` or this
package. Name rules come from ``kernel.names``.
"""

from kernel.store.db import BLOCK
from kernel.store.embedders import EMBEDDERS, Embedder, HashingEmbedder, MiniLMEmbedder
from kernel.store.index import chunk_text
from kernel.store.manager import StorageManager
from kernel.store.search import Hit
from kernel.store.tree import KIND_OF_TYPE, KINDS, ROOT, Entry, normalize

__all__ = [
    "BLOCK",
    "EMBEDDERS",
    "KINDS",
    "KIND_OF_TYPE",
    "ROOT",
    "Embedder",
    "Entry",
    "HashingEmbedder",
    "Hit",
    "MiniLMEmbedder",
    "StorageManager",
    "chunk_text",
    "normalize",
]
