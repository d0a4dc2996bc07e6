"""Data for recurrent models: vocabularies, text streams for TBPTT, padding collate, DataModules."""

from lightning_rnn.data.bucketing import BucketBatchSampler
from lightning_rnn.data.collate import pad_collate
from lightning_rnn.data.corpus import (
    TokenCorpus,
    default_cache_dir,
    read_text_source,
    stdlib_corpus_files,
    stdlib_source_dir,
)
from lightning_rnn.data.seq2seq import ReversalDataModule, ReversalDataset, Seq2SeqCollate, seq2seq_collate
from lightning_rnn.data.stream import StreamChunks, TextStreamDataModule, batchify
from lightning_rnn.data.synthetic import BitStreamTaggingDataModule, make_bit_streams
from lightning_rnn.data.text_classification import (
    DEFAULT_STDLIB_PACKAGES,
    TextClassificationDataModule,
    read_labeled_texts,
    stdlib_snippets,
)
from lightning_rnn.data.vocab import CharVocab, Vocab, WordVocab

__all__: list[str] = [
    "BitStreamTaggingDataModule",
    "BucketBatchSampler",
    "DEFAULT_STDLIB_PACKAGES",
    "ReversalDataModule",
    "ReversalDataset",
    "Seq2SeqCollate",
    "TextClassificationDataModule",
    "pad_collate",
    "CharVocab",
    "StreamChunks",
    "TextStreamDataModule",
    "Vocab",
    "WordVocab",
    "batchify",
    "make_bit_streams",
    "read_labeled_texts",
    "seq2seq_collate",
    "stdlib_snippets",
    "read_text_source",
    "stdlib_corpus_files",
    "stdlib_source_dir",
    "TokenCorpus",
    "default_cache_dir",
]
