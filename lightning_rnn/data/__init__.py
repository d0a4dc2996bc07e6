"""Data for recurrent models: vocabularies, text streams for TBPTT, padding collate."""

from lightning_rnn.data.bucketing import BucketBatchSampler
from lightning_rnn.data.collate import pad_collate
from lightning_rnn.data.corpus import read_text_source, stdlib_corpus_files, stdlib_source_dir
from lightning_rnn.data.stream import StreamChunks, TextStreamDataModule, batchify
from lightning_rnn.data.vocab import CharVocab, Vocab, WordVocab

__all__: list[str] = [
    "BucketBatchSampler",
    "pad_collate",
    "CharVocab",
    "StreamChunks",
    "TextStreamDataModule",
    "Vocab",
    "WordVocab",
    "batchify",
    "read_text_source",
    "stdlib_corpus_files",
    "stdlib_source_dir",
]
