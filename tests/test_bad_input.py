"""Bad-input audit: every public constructor and method answers nonsense with an early ``ValueError``/``TypeError``
that names the user-facing argument (``Expected <arg> ..., got <value>``).

One table per public class or function; each row is (call, exception type, regex naming the argument). Rows only
construct objects or run a tiny forward, so the whole file takes a few seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rnn.callbacks import (
    NTASGD,
    AdaptiveGradientClipping,
    AdaptiveTBPTT,
    GradientFlowMonitor,
    LastCheckpoint,
    SpectralNormMonitor,
    TokensPerSecond,
)
from lightning_rnn.data import (
    BitStreamTaggingDataModule,
    BucketBatchSampler,
    CharVocab,
    ReversalDataModule,
    ReversalDataset,
    Seq2SeqCollate,
    StreamChunks,
    TextClassificationDataModule,
    TextStreamDataModule,
    WordVocab,
    batchify,
    make_bit_streams,
    pad_collate,
    seq2seq_collate,
)
from lightning_rnn.modules import RNNClassifier, RNNLanguageModel, RNNTagger, Seq2SeqAttention, TBPTTModule
from lightning_rnn.nn import (
    BahdanauAttention,
    EmbeddingDropout,
    LockedDropout,
    LuongAttention,
    RNNConfig,
    RNNStack,
)
from lightning_rnn.nn.search import beam_search, greedy_search
from tests._encoder import with_encoder

NAN, INF = math.nan, math.inf
E = ValueError
T = TypeError

# --------------------------------------------------------------------------------------------- tables


def _stack(**kw):
    return RNNStack(**({"cell": "lstm", "input_size": 3, "hidden_size": 4} | kw))


RNN_STACK = [
    (lambda: _stack(cell="transformer"), E, r"Expected cell to be one of \['rnn', 'lstm', 'gru'\], got 'transformer'"),
    (lambda: _stack(cell=3), E, r"Expected cell to be one of .*got 3"),
    (lambda: _stack(input_size=0), E, r"Expected input_size to be an int >= 1, got 0"),
    (lambda: _stack(input_size=True), E, r"Expected input_size to be an int >= 1, got True"),
    (lambda: _stack(hidden_size=2.5), E, r"Expected hidden_size to be an int >= 1, got 2.5"),
    (lambda: _stack(num_layers=-1), E, r"Expected num_layers to be an int >= 1, got -1"),
    (lambda: _stack(input_dropout=1.0), E, r"Expected input_dropout to be a float in \[0, 1\), got 1.0"),
    (lambda: _stack(layer_dropout=-0.1), E, r"Expected layer_dropout .*got -0.1"),
    (lambda: _stack(output_dropout=NAN), E, r"Expected output_dropout .*got nan"),
    (lambda: _stack(recurrent_dropout=True), E, r"Expected recurrent_dropout .*got True"),
    (lambda: _stack(recurrent_dropout="0.2"), E, r"Expected recurrent_dropout .*got '0.2'"),
    (lambda: _stack(zoneout=1.5), E, r"Expected zoneout .*got 1.5"),
    (lambda: _stack(recurrent_dropout_mode="both"), E, r"recurrent_dropout_mode.*'both'"),
    (lambda: _stack(residual="some"), E, r"Expected residual .*got 'some'"),
    (lambda: _stack(bidirectional="False"), E, r"Expected bidirectional to be a bool, got 'False'"),
    (lambda: _stack(batch_first=1), E, r"Expected batch_first to be a bool, got 1"),
    (lambda: _stack(bias=None), E, r"Expected bias to be a bool, got None"),
    (lambda: _stack(dtype=torch.int64), E, r"Expected dtype to be a floating-point torch.dtype"),
    (lambda: _stack(dropout=0.3), E, r"Expected dropout=0 .*layer_dropout"),
    (lambda: _stack().forward(torch.zeros(2, 5, 7)), E, r"input_size|7"),
    (lambda: _stack().forward(torch.zeros(2, 5)), E, r"Expected .*(N, L, input_size|3-D|dim)"),
    (lambda: _stack().forward(torch.zeros(2, 5, 3, dtype=torch.long)), (E, TypeError), r"dtype|floating"),
    (lambda: _stack().forward(torch.zeros(2, 5, 3), lengths=torch.tensor([5, 9])), E, r"lengths"),
    (lambda: _stack().forward(torch.zeros(2, 5, 3), lengths=torch.tensor([5, 0])), E, r"lengths"),
    (lambda: _stack().forward(torch.zeros(2, 5, 3), lengths=torch.tensor([5])), E, r"lengths"),
    (lambda: _stack().init_state(0), E, r"Expected batch_size to be an int >= 1, got 0"),
]


LOCKED_DROPOUT = [
    (lambda: LockedDropout(p=1.0), E, r"Expected p to be a float in \[0, 1\), got 1.0"),
    (lambda: LockedDropout(p=-0.5), E, r"Expected p .*got -0.5"),
    (lambda: LockedDropout(p=NAN), E, r"Expected p .*got nan"),
    (lambda: LockedDropout(p=True), E, r"Expected p .*got True"),
    (lambda: LockedDropout(p="0.5"), E, r"Expected p .*got '0.5'"),
    (lambda: LockedDropout(0.1, batch_first="no"), E, r"Expected batch_first to be a bool, got 'no'"),
    (lambda: LockedDropout(0.1, mc_dropout=1), E, r"Expected mc_dropout to be a bool, got 1"),
]

EMBEDDING_DROPOUT = [
    (lambda: EmbeddingDropout(torch.nn.Embedding(5, 3), p=1.0), E, r"Expected p .*got 1.0"),
    (lambda: EmbeddingDropout(torch.nn.Embedding(5, 3), p=INF), E, r"Expected p .*got inf"),
    (lambda: EmbeddingDropout(torch.nn.Embedding(5, 3), mc_dropout="yes"), E, r"Expected mc_dropout to be a bool"),
    (lambda: EmbeddingDropout(torch.nn.Linear(5, 3), p=0.1), (E, TypeError), r"embedding"),
    (lambda: EmbeddingDropout(torch.nn.Embedding(5, 3))(torch.tensor([[7]])), E, r"Expected input ids in \[0, 5\)"),
]

ATTENTION = [
    (lambda: BahdanauAttention(0, 4, 4), E, r"Expected query_size to be an int >= 1, got 0"),
    (lambda: BahdanauAttention(4, True, 4), E, r"Expected key_size to be an int >= 1, got True"),
    (lambda: BahdanauAttention(4, 4, 2.0), E, r"Expected hidden_size to be an int >= 1, got 2.0"),
    (lambda: LuongAttention(4, 4, score="cosine"), E, r"Expected score to be one of .*'cosine'"),
    (lambda: LuongAttention(4, 5, score="dot"), E, r"query_size.*key_size|key_size.*query_size"),
    (lambda: LuongAttention(-1, 4), E, r"Expected query_size to be an int >= 1, got -1"),
    (lambda: LuongAttention(4, 4, score="concat", hidden_size=0), E, r"Expected hidden_size to be an int >= 1, got 0"),
    (lambda: BahdanauAttention(4, 4, 4)(torch.zeros(2, 5), torch.zeros(2, 3, 4)), E, r"query"),
    (lambda: BahdanauAttention(4, 4, 4)(torch.zeros(2, 4), torch.zeros(2, 3, 6)), E, r"keys"),
    (lambda: BahdanauAttention(4, 4, 4)(torch.zeros(2, 4), torch.zeros(2, 3, 4), torch.ones(2, 5, dtype=torch.bool)),
     E, r"mask"),
]


def _step(state, tokens, memory):
    return torch.zeros(tokens.size(0), 6).log_softmax(-1), state, None


def _greedy(**kw):
    return greedy_search(_step, None, None, **({"batch_size": 2, "bos_id": 1, "eos_id": 2, "pad_id": 0,
                                                "max_len": 3} | kw))


def _beam(**kw):
    return beam_search(_step, None, None, **({"batch_size": 2, "bos_id": 1, "eos_id": 2, "pad_id": 0,
                                              "max_len": 3, "beam_size": 2} | kw))


SEARCH = [
    (lambda: _greedy(max_len=0), E, r"Expected max_len to be an int >= 1, got 0"),
    (lambda: _greedy(max_len=True), E, r"Expected max_len .*got True"),
    (lambda: _greedy(max_len=torch.tensor([3])), E, r"Expected max_len of shape \(2,\)"),
    (lambda: _greedy(max_len=torch.tensor([3, 0])), E, r"Expected every max_len >= 1"),
    (lambda: _greedy(batch_size=0), E, r"Expected batch_size to be an int >= 1, got 0"),
    (lambda: _beam(beam_size=0), E, r"Expected beam_size to be an int >= 1, got 0"),
    (lambda: _beam(beam_size=2.0), E, r"Expected beam_size .*got 2.0"),
    (lambda: _beam(n_best=3), E, r"n_best"),
    (lambda: _beam(n_best=0), E, r"n_best"),
    (lambda: _beam(length_penalty_type="x"), E, r"length_penalty_type"),
    (lambda: _beam(alpha=NAN), E, r"alpha"),
    (lambda: _beam(batch_size=-1), E, r"batch_size"),
]


def _lm(**kw):
    return RNNLanguageModel(**with_encoder({"vocab_size": 10, "embedding_dim": 4, "hidden_size": 4} | kw))


LANGUAGE_MODEL = [
    (lambda: _lm(vocab_size=0), E, r"Expected vocab_size to be an int >= 1, got 0"),
    (lambda: _lm(vocab_size="10"), E, r"Expected vocab_size .*got '10'"),
    (lambda: _lm(embedding_dim=False), E, r"Expected embedding_dim .*got False"),
    (lambda: _lm(hidden_size=0), E, r"hidden_size"),
    (lambda: RNNLanguageModel(10, encoder="lstm"), T, r"Expected encoder to be an RNNConfig, a dict of its fields or None, got str"),
    (lambda: RNNLanguageModel(10, encoder={"hidden": 4}), T, r"Expected encoder keys among \[.*'hidden_size'.*\], got \['hidden'\]"),
    (lambda: RNNLanguageModel(10, encoder={"hidden_size": 0}), E, r"Expected hidden_size to be an int >= 1, got 0"),
    (lambda: _lm(bidirectional=True), E, r"Expected encoder.bidirectional=False for a language model"),
    (lambda: _stack(num_layers=2, residual=1), E, r"Expected residual to be False, True or 'all', got 1"),
    (lambda: RNNConfig(num_layers=2, residual=1), E, r"Expected residual to be False, True or 'all', got 1"),
    (lambda: RNNConfig(residual="yes"), E, r"Expected residual to be False, True or 'all', got 'yes'"),
    (lambda: RNNConfig(residual=True), E, r"Expected num_layers >= 2 for residual=True"),
    (lambda: _lm(num_layers=0), E, r"num_layers"),
    (lambda: _lm(cell="cnn"), E, r"Expected cell to be one of"),
    (lambda: _lm(embedding_dropout=1.0), E, r"Expected embedding_dropout .*got 1.0"),
    (lambda: _lm(input_dropout=-1), E, r"Expected input_dropout"),
    (lambda: _lm(layer_dropout=NAN), E, r"Expected layer_dropout"),
    (lambda: _lm(zoneout=2), E, r"Expected zoneout"),
    (lambda: _lm(ar_alpha=-1.0), E, r"Expected ar_alpha to be a float >= 0, got -1.0"),
    (lambda: _lm(tar_beta=NAN), E, r"Expected tar_beta .*got nan"),
    (lambda: _lm(lr=0), E, r"Expected lr to be a float > 0, got 0"),
    (lambda: _lm(lr=INF), E, r"Expected lr .*got inf"),
    (lambda: _lm(lr=True), E, r"Expected lr .*got True"),
    (lambda: _lm(weight_decay=-1e-3), E, r"Expected weight_decay"),
    (lambda: _lm(optimizer="adamx"), E, r"Expected optimizer .*'adamx'"),
    (lambda: _lm(tbptt_steps=0), E, r"Expected tbptt_steps to be an int >= 1 or None, got 0"),
    (lambda: _lm(tbptt_backprop_steps=-2), E, r"tbptt_backprop_steps"),
    (lambda: _lm(eval_tbptt_steps=1.5), E, r"eval_tbptt_steps"),
    (lambda: _lm(gradient_clip_val=-1.0), E, r"gradient_clip_val"),
    (lambda: _lm(gradient_clip_val=NAN), E, r"gradient_clip_val"),
    (lambda: _lm(gradient_clip_algorithm="max"), E, r"gradient_clip_algorithm"),
    (lambda: _lm(lr_scheduler_step="hour"), E, r"lr_scheduler_step"),
    (lambda: _lm(max_consecutive_skips=0), E, r"max_consecutive_skips"),
    (lambda: _lm(nonfinite_inputs="ignore-all"), E, r"nonfinite_inputs"),
    (lambda: _lm(tbptt_steps=4, variable_bptt=True, variable_bptt_std=-1.0), E, r"variable_bptt_std"),
    (lambda: _lm(tbptt_steps=4, variable_bptt=True, variable_bptt_min=0), E, r"variable_bptt_min"),
    (lambda: _lm(pad_id=1.5), E, r"Expected pad_id to be an int, got 1.5"),
    (lambda: _lm(output="tiny"), E, r"output"),
    (lambda: _lm(output="sampled", num_sampled=0), E, r"Expected num_sampled to be an int in \[1, 10\], got 0"),
    (lambda: _lm(output="sampled", num_sampled=50), E, r"num_sampled"),
    (lambda: _lm(output="sampled", num_sampled=5, sampler="zipf2"), E, r"Expected sampler to be one of .*'zipf2'"),
    (lambda: _lm(output="adaptive", adaptive_cutoffs=[5, 3]), E, r"Expected adaptive_cutoffs .*\[5, 3\]"),
    (lambda: _lm(output="adaptive", adaptive_cutoffs=[20]), E, r"Expected adaptive_cutoffs .*\[20\]"),
    (lambda: _lm(output="adaptive", adaptive_cutoffs=[5], adaptive_div_value=0), E, r"adaptive_div_value"),
    (lambda: _lm(output="adaptive", adaptive_cutoffs=[5], tie_weights=True), E, r"tie_weights"),
    (lambda: _lm(tie_weights=True, embedding_dim=3), E, r"tie_weights"),
    (lambda: _lm(tie_weights="no"), E, r"Expected tie_weights to be a bool, got 'no'"),
    (lambda: _lm(carry_state="no"), E, r"Expected carry_state to be a bool, got 'no'"),
    (lambda: _lm()(torch.tensor([[1, 10]])), E, r"Expected inputs ids in \[0, 10\)"),
    (lambda: _lm()(torch.tensor([[1, -1]])), E, r"Expected inputs ids in \[0, 10\)"),
    (lambda: _lm()(torch.zeros(2, 3)), TypeError, r"Expected inputs to be an integer tensor of token ids"),
    (lambda: _lm(embedding_dropout=0.1)(torch.tensor([[11]])), E, r"Expected inputs ids in \[0, 10\)"),
]


def _clf(**kw):
    return RNNClassifier(**with_encoder({"num_classes": 3, "vocab_size": 10, "embedding_dim": 4, "hidden_size": 4} | kw))


CLASSIFIER = [
    (lambda: _clf(num_classes=1), E, r"Expected num_classes to be an int >= 2, got 1"),
    (lambda: _clf(num_classes=True), E, r"num_classes"),
    (lambda: _clf(vocab_size=None), E, r"vocab_size.*input_size|input_size.*vocab_size"),
    (lambda: _clf(input_size=4), E, r"vocab_size.*input_size|input_size.*vocab_size"),
    (lambda: _clf(vocab_size=0), E, r"vocab_size"),
    (lambda: _clf(summary="median"), E, r"summary"),
    (lambda: _clf(loss_at="start"), E, r"loss_at"),
    (lambda: _clf(dropout=1.0), E, r"Expected dropout"),
    (lambda: _clf(hidden_size=-4), E, r"hidden_size"),
    (lambda: _clf(cell="LSTMx"), E, r"cell"),
    (lambda: _clf(bidirectional="no"), E, r"Expected bidirectional to be a bool, got 'no'"),
    (lambda: _clf(lr=-1.0), E, r"Expected lr"),
    (lambda: _clf(tbptt_steps=True), E, r"tbptt_steps"),
    (lambda: _clf()(torch.tensor([[1, 12]])), E, r"Expected inputs ids in \[0, 10\)"),
    (lambda: _clf()(torch.tensor([[1, 2]]), lengths=torch.tensor([2, 2])), E, r"Expected lengths of shape \(1,\)"),
    (lambda: _tagger()(torch.tensor([[1, 2]]), lengths=torch.tensor([[2]])), E, r"Expected lengths of shape \(1,\)"),
]


def _tagger(**kw):
    return RNNTagger(**with_encoder({"num_classes": 3, "vocab_size": 10, "embedding_dim": 4, "hidden_size": 4} | kw))


TAGGER = [
    (lambda: _tagger(num_classes=0), E, r"num_classes"),
    (lambda: _tagger(pad_id=1), E, r"pad_id"),
    (lambda: _tagger(pad_id="x"), E, r"Expected pad_id to be an int, got 'x'"),
    (lambda: _tagger(input_dropout=1.0), E, r"input_dropout"),
    (lambda: _tagger(recurrent_dropout_mode="x"), E, r"recurrent_dropout_mode"),
    (lambda: _tagger(embedding_dim=0), E, r"embedding_dim"),
    (lambda: _tagger(weight_decay=NAN), E, r"weight_decay"),
    (lambda: _tagger()(torch.tensor([[1, 10]])), E, r"Expected inputs ids in \[0, 10\)"),
]


def _s2s(**kw):
    return Seq2SeqAttention(**with_encoder({"src_vocab": 10, "tgt_vocab": 10, "embedding_dim": 4, "hidden_size": 4} | kw,
                                         RNNConfig(bidirectional=True)))


SEQ2SEQ = [
    (lambda: _s2s(src_vocab=0), E, r"src_vocab"),
    (lambda: _s2s(tgt_vocab=True), TypeError, r"Expected tgt_vocab .*got True"),
    (lambda: _s2s(src_vocab="ten"), TypeError, r"Expected src_vocab .*got 'ten'"),
    (lambda: _s2s(attention="global"), E, r"attention"),
    (lambda: _s2s(bridge="magic"), E, r"bridge"),
    (lambda: _s2s(ordering="middle"), E, r"ordering"),
    (lambda: _s2s(cell="lstm2"), E, r"cell"),
    (lambda: _s2s(decoder_hidden_size=0), E, r"decoder_hidden_size"),
    (lambda: _s2s(decoder_num_layers=0), E, r"decoder_num_layers"),
    (lambda: _s2s(decoder_dropout=1.0), E, r"decoder_dropout"),
    (lambda: _s2s(teacher_forcing=1.5), E, r"teacher_forcing"),
    (lambda: _s2s(teacher_forcing=NAN), E, r"teacher_forcing"),
    (lambda: _s2s(teacher_forcing_end=-0.1), E, r"teacher_forcing_end"),
    (lambda: _s2s(teacher_forcing_steps=-1), E, r"teacher_forcing_steps"),
    (lambda: _s2s(label_smoothing=1.0), E, r"label_smoothing"),
    (lambda: _s2s(beam_size=0), E, r"Expected beam_size to be an int >= 1, got 0"),
    (lambda: _s2s(max_decode_len=0), E, r"Expected max_decode_len to be an int >= 1, got 0"),
    (lambda: _s2s(max_decode_ratio=0.0), E, r"max_decode_ratio"),
    (lambda: _s2s(length_penalty=NAN), E, r"length_penalty"),
    (lambda: _s2s(length_penalty_type="x"), E, r"length_penalty_type"),
    (lambda: _s2s(pad_id=10), E, r"pad_id"),
    (lambda: _s2s(bos_id=-1), E, r"bos_id"),
    (lambda: _s2s(eos_id=0), E, r"eos_id|pad_id"),
    (lambda: _s2s(num_attention_maps=-1), E, r"num_attention_maps"),
    (lambda: _s2s(lr=0.0), E, r"Expected lr"),
    (lambda: _s2s(input_feeding="no"), E, r"Expected input_feeding to be a bool, got 'no'"),
    (lambda: _s2s(tie_weights=0), E, r"Expected tie_weights to be a bool, got 0"),
    (lambda: _s2s(bidirectional="no"), E, r"Expected bidirectional to be a bool, got 'no'"),
]


class _Own(TBPTTModule):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.rnn = RNNStack("gru", 2, 3)


TBPTT = [
    (lambda: _Own(tbptt_steps=0), E, r"Expected tbptt_steps to be an int >= 1 or None, got 0"),
    (lambda: _Own(tbptt_steps=2.0), E, r"tbptt_steps"),
    (lambda: _Own(tbptt_steps=8, tbptt_backprop_steps=4), E, r"tbptt_backprop_steps"),
    (lambda: _Own(eval_tbptt_steps=False), E, r"eval_tbptt_steps"),
    (lambda: _Own(variable_bptt=True), E, r"variable_bptt.*tbptt_steps|tbptt_steps.*variable_bptt"),
    (lambda: _Own(tbptt_steps=4, variable_bptt=True, variable_bptt_std=NAN), E, r"variable_bptt_std"),
    (lambda: _Own(tbptt_steps=4, variable_bptt=True, variable_bptt_min=0), E, r"variable_bptt_min"),
    (lambda: _Own(carry_state="yes"), E, r"Expected carry_state to be a bool, got 'yes'"),
    (lambda: _Own(tbptt_steps=4, variable_bptt=1), E, r"Expected variable_bptt to be a bool, got 1"),
    (lambda: _Own(gradient_clip_val=0.0), E, r"gradient_clip_val"),
    (lambda: _Own(gradient_clip_val=INF), E, r"gradient_clip_val"),
    (lambda: _Own(gradient_clip_algorithm="l1"), E, r"gradient_clip_algorithm"),
    (lambda: _Own(lr_scheduler_step="minute"), E, r"lr_scheduler_step"),
    (lambda: _Own(state_batch_dim="rows"), TypeError, r"Expected state_batch_dim .*got 'rows'"),
    (lambda: _Own(max_consecutive_skips=-1), E, r"max_consecutive_skips"),
    (lambda: _Own(nonfinite_inputs="drop"), E, r"nonfinite_inputs"),
]


CALLBACKS = [
    (lambda: AdaptiveGradientClipping(mode="median"), E, r"Expected mode"),
    (lambda: AdaptiveGradientClipping(quantile=0.0), E, r"quantile"),
    (lambda: AdaptiveGradientClipping(quantile=NAN), E, r"quantile"),
    (lambda: AdaptiveGradientClipping(window=0), E, r"Expected window to be an int >= 1 or None, got 0"),
    (lambda: AdaptiveGradientClipping(warmup_steps=-1), E, r"warmup_steps"),
    (lambda: AdaptiveGradientClipping(alpha=1.0), E, r"alpha"),
    (lambda: AdaptiveGradientClipping(mode="zscore", z_threshold=-1.0), E, r"z_threshold"),
    (lambda: AdaptiveGradientClipping(mode="agc", agc_lambda=0.0), E, r"agc_lambda"),
    (lambda: AdaptiveGradientClipping(mode="agc", agc_eps=-1.0), E, r"agc_eps"),
    (lambda: AdaptiveGradientClipping(max_norm=0.0), E, r"max_norm"),
    (lambda: AdaptiveGradientClipping(norm_type=0), E, r"norm_type"),
    (lambda: AdaptiveGradientClipping(norm_type="2"), E, r"Expected norm_type .*got '2'"),
    (lambda: AdaptiveGradientClipping(alpha="0.9"), E, r"Expected alpha .*got '0.9'"),
    (lambda: AdaptiveGradientClipping(mode="agc", agc_lambda=INF), E, r"Expected agc_lambda .*got inf"),
    (lambda: AdaptiveGradientClipping(max_norm=NAN), E, r"Expected max_norm .*got nan"),
    (lambda: AdaptiveGradientClipping(mode="agc", agc_exclude="bias"), TypeError, r"Expected agc_exclude"),
    (lambda: AdaptiveGradientClipping(max_nonfinite_steps=0), E, r"max_nonfinite_steps"),
    (lambda: AdaptiveGradientClipping(log_every_n_steps=0), E, r"log_every_n_steps"),
    (lambda: AdaptiveTBPTT(every_n_steps=0), E, r"every_n_steps"),
    (lambda: AdaptiveTBPTT(bias_bound=1.0), E, r"bias_bound"),
    (lambda: AdaptiveTBPTT(min_steps=0), E, r"min_steps"),
    (lambda: AdaptiveTBPTT(min_steps=10, max_steps=5), E, r"min_steps.*max_steps"),
    (lambda: AdaptiveTBPTT(probe_steps=0), E, r"probe_steps"),
    (lambda: AdaptiveTBPTT(smoothing=0.0), E, r"smoothing"),
    (lambda: AdaptiveTBPTT(max_change=0.5), E, r"max_change"),
    (lambda: AdaptiveTBPTT(tolerance=1.0), E, r"tolerance"),
    (lambda: AdaptiveTBPTT(num_targets=0), E, r"num_targets"),
    (lambda: AdaptiveTBPTT(backward_passes=0), E, r"backward_passes"),
    (lambda: AdaptiveTBPTT(tail_fraction=0.0), E, r"tail_fraction"),
    (lambda: AdaptiveTBPTT(floor=NAN), E, r"floor"),
    (lambda: GradientFlowMonitor(every_n_steps=0), E, r"every_n_steps"),
    (lambda: GradientFlowMonitor(max_lag=0), E, r"max_lag"),
    (lambda: GradientFlowMonitor(eps=1.0), E, r"eps"),
    (lambda: GradientFlowMonitor(num_targets=0), E, r"num_targets"),
    (lambda: GradientFlowMonitor(backward_passes=-1), E, r"backward_passes"),
    (lambda: GradientFlowMonitor(log_lags=[1, -2]), E, r"log_lags"),
    (lambda: GradientFlowMonitor(per_layer="no"), E, r"Expected per_layer to be a bool, got 'no'"),
    (lambda: SpectralNormMonitor(exact="no"), E, r"Expected exact to be a bool, got 'no'"),
    (lambda: SpectralNormMonitor(every_n_steps=0), E, r"every_n_steps"),
    (lambda: SpectralNormMonitor(num_iters=0), E, r"num_iters"),
    (lambda: SpectralNormMonitor(warmup_iters=True), E, r"warmup_iters"),
    (lambda: LastCheckpoint(every_n_steps=0), E, r"every_n_steps"),
    (lambda: LastCheckpoint(filename=""), E, r"filename"),
    (lambda: TokensPerSecond(window=0), E, r"window"),
    (lambda: TokensPerSecond(prog_bar="no"), E, r"Expected prog_bar to be a bool, got 'no'"),
    (lambda: LastCheckpoint(dirpath=3), E, r"Expected dirpath to be a path .*got 3"),
    (lambda: NTASGD(n=0), E, r"Expected n to be an int >= 1, got 0"),
    (lambda: NTASGD(monitor=""), E, r"monitor"),
    (lambda: NTASGD(mode="avg"), E, r"mode"),
]


DATA_MODULES = [
    (lambda: TextStreamDataModule(batch_size=0), E, r"batch_size"),
    (lambda: TextStreamDataModule(bptt=-1), E, r"bptt"),
    (lambda: TextStreamDataModule(bptt=True), E, r"bptt"),
    (lambda: TextStreamDataModule(level="sentence"), E, r"level"),
    (lambda: TextStreamDataModule(val_fraction=1.0), E, r"val_fraction"),
    (lambda: TextStreamDataModule(test_fraction=NAN), E, r"test_fraction"),
    (lambda: TextStreamDataModule(val_fraction=0.6, test_fraction=0.5), E, r"val_fraction \+ test_fraction"),
    (lambda: TextStreamDataModule(min_freq=0), E, r"min_freq"),
    (lambda: TextStreamDataModule(max_size=0), E, r"max_size"),
    (lambda: TextStreamDataModule(max_bytes=0), E, r"max_bytes"),
    (lambda: TextStreamDataModule(max_bytes=-5), E, r"max_bytes"),
    (lambda: TextStreamDataModule(eval_batch_size=0), E, r"eval_batch_size"),
    (lambda: TextStreamDataModule(num_workers=-1), E, r"num_workers"),
    (lambda: TextStreamDataModule(rank=0), E, r"rank and world_size"),
    (lambda: TextStreamDataModule(rank=2, world_size=2), E, r"Expected rank to be an int in \[0, 1\], got 2"),
    (lambda: TextStreamDataModule(world_size=0, rank=0), E, r"world_size"),
    (lambda: TextStreamDataModule(cache="yes"), E, r"cache"),
    (lambda: TextStreamDataModule(predict_split="dev"), E, r"predict_split"),
    (lambda: TextStreamDataModule(drop_last="no"), E, r"Expected drop_last to be a bool, got 'no'"),
    (lambda: TextStreamDataModule(pin_memory=1), E, r"Expected pin_memory to be a bool, got 1"),
    (lambda: TextStreamDataModule(mark_documents="no"), E, r"Expected mark_documents to be a bool"),
    (lambda: TextStreamDataModule(vocab=3), TypeError, r"Expected vocab to be a Vocab"),
    (lambda: TextClassificationDataModule(batch_size=0), E, r"batch_size"),
    (lambda: TextClassificationDataModule(max_length=0), E, r"max_length"),
    (lambda: TextClassificationDataModule(val_fraction=-0.1), E, r"val_fraction"),
    (lambda: TextClassificationDataModule(samples_per_class=0), E, r"samples_per_class"),
    (lambda: TextClassificationDataModule(min_freq=0), E, r"min_freq"),
    (lambda: TextClassificationDataModule(num_workers=-2), E, r"num_workers"),
    (lambda: TextClassificationDataModule(seed="x"), E, r"Expected seed to be an int, got 'x'"),
    (lambda: TextClassificationDataModule(packages=[]), E, r"Expected packages .*got \[\]"),
    (lambda: TextClassificationDataModule(packages="json"), E, r"Expected packages .*got 'json'"),
    (lambda: BitStreamTaggingDataModule(task="xor"), E, r"task"),
    (lambda: BitStreamTaggingDataModule(length=1), E, r"Expected length to be an int >= 2, got 1"),
    (lambda: BitStreamTaggingDataModule(delay=0), E, r"delay"),
    (lambda: BitStreamTaggingDataModule(num_train=0), E, r"num_train"),
    (lambda: BitStreamTaggingDataModule(batch_size=1.0), E, r"batch_size"),
    (lambda: BitStreamTaggingDataModule(seed=1.5), E, r"Expected seed to be an int, got 1.5"),
    (lambda: BitStreamTaggingDataModule(task="delay", length=10, delay=10), E, r"Expected delay < length \(10\)"),
    (lambda: ReversalDataModule(num_symbols=0), E, r"num_symbols"),
    (lambda: ReversalDataModule(train_max_len=0), E, r"train_max_len"),
    (lambda: ReversalDataModule(test_max_len=-1), E, r"test_max_len"),
    (lambda: ReversalDataModule(eval_batch_size=0), E, r"eval_batch_size"),
    (lambda: ReversalDataset(0), E, r"num_samples"),
    (lambda: ReversalDataset(4, min_len=5, max_len=3), E, r"min_len"),
    (lambda: ReversalDataset(4, num_symbols=0), E, r"num_symbols"),
    (lambda: ReversalDataset(4, offset=-1), E, r"Expected offset to be an int >= 0, got -1"),
    (lambda: ReversalDataset(4, min_len=0), E, r"Expected min_len to be an int >= 1, got 0"),
    (lambda: ReversalDataset(4, seed="x"), E, r"Expected seed to be an int, got 'x'"),
]


DATA_FUNCTIONS = [
    (lambda: make_bit_streams("parity", 0, 10), E, r"Expected n to be an int >= 1, got 0"),
    (lambda: make_bit_streams("nope", 2, 10), E, r"task"),
    (lambda: make_bit_streams("parity", 2, 10, seed="x"), E, r"Expected seed to be an int, got 'x'"),
    (lambda: batchify(torch.arange(10), 0), E, r"Expected rows to be an int >= 1, got 0"),
    (lambda: batchify(torch.arange(10), 20), E, r"rows"),
    (lambda: batchify(torch.zeros(2, 3, dtype=torch.long), 2), E, r"1-D"),
    (lambda: StreamChunks(torch.zeros(2, 5, dtype=torch.long), 0), E, r"Expected bptt to be an int >= 1, got 0"),
    (lambda: StreamChunks(torch.zeros(2, 5), 2), TypeError, r"integer token ids"),
    (lambda: StreamChunks(torch.zeros(10, dtype=torch.long), 2), E, r"streams"),
    (lambda: BucketBatchSampler([3, 4, 5], 0), E, r"Expected batch_size to be an int >= 1, got 0"),
    (lambda: BucketBatchSampler([3, 4, 5], 2, bucket_size_multiplier=0), E, r"bucket_size_multiplier"),
    (lambda: BucketBatchSampler([3, 4, 5], 2, num_replicas=2, rank=2), E, r"rank"),
    (lambda: BucketBatchSampler([3, -1], 2), E, r"lengths"),
    (lambda: BucketBatchSampler([3, 4], 2, rank=0), E, r"num_replicas and rank"),
    (lambda: BucketBatchSampler([3, 4], 2, shuffle="no"), E, r"Expected shuffle to be a bool, got 'no'"),
    (lambda: BucketBatchSampler([3, 4], 2, seed=1.5), E, r"Expected seed to be an int, got 1.5"),
    (lambda: StreamChunks(torch.zeros(2, 5, dtype=torch.long), 2, drop_last="no"), E, r"Expected drop_last to be a bool"),
    (lambda: seq2seq_collate([([1], [2])], src_eos="no"), E, r"Expected src_eos to be a bool, got 'no'"),
    (lambda: pad_collate([]), E, r"batch|empty"),
    (lambda: seq2seq_collate([]), E, r"pairs|empty"),
    (lambda: seq2seq_collate([([1, 2], [3])], pad_id=2, eos_id=2), E, r"pad_id different from eos_id"),
    (lambda: seq2seq_collate([([1, 2], [3])], bos_id=-1), E, r"Expected bos_id to be an int >= 0, got -1"),
    (lambda: Seq2SeqCollate(pad_id=2, eos_id=2), E, r"pad_id different from eos_id"),
    (lambda: Seq2SeqCollate(pad_id=-1), E, r"Expected pad_id to be an int >= 0, got -1"),
]


VOCABS = [
    (lambda: CharVocab(["a", "a"]), E, r"Expected unique tokens, got 1 duplicates"),
    (lambda: CharVocab("abc"), E, r"Expected tokens to be a sequence of strings, got 'abc'"),
    (lambda: WordVocab([1, 2]), E, r"Expected tokens to be a sequence of strings"),
    (lambda: WordVocab(["<pad>", "<unk>", "x"]).encode(3), TypeError, r"Expected text to be a str, got int"),
    (lambda: CharVocab(["a"]).encode(["a"]), TypeError, r"Expected text to be a str, got list"),
    (lambda: CharVocab.build(b"abc"), TypeError, r"Expected text to be a str, got bytes"),
    (lambda: WordVocab(["<pad>", "<unk>", "x"]).decode([7]), E, r"token ids in \[0, 3\)"),
    (lambda: WordVocab(["<pad>", "<unk>", "x"]).decode([1.5]), TypeError, r"int token ids"),
    (lambda: WordVocab.build("a b", min_freq=0), E, r"Expected min_freq to be an int >= 1, got 0"),
    (lambda: WordVocab.build("a b", max_size=0), E, r"Expected max_size to be an int >= 1 or None, got 0"),
]


TABLES = {
    "RNNStack": RNN_STACK,
    "LockedDropout": LOCKED_DROPOUT,
    "EmbeddingDropout": EMBEDDING_DROPOUT,
    "attention": ATTENTION,
    "search": SEARCH,
    "RNNLanguageModel": LANGUAGE_MODEL,
    "RNNClassifier": CLASSIFIER,
    "RNNTagger": TAGGER,
    "Seq2SeqAttention": SEQ2SEQ,
    "TBPTTModule": TBPTT,
    "callbacks": CALLBACKS,
    "data_modules": DATA_MODULES,
    "data_functions": DATA_FUNCTIONS,
    "vocabularies": VOCABS,
}


def _run(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _params(table):
    return [pytest.param(*row, id=str(i)) for i, row in enumerate(table)]


@pytest.mark.parametrize(("call", "error", "match"), _params(RNN_STACK))
def test_rnn_stack(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(LOCKED_DROPOUT))
def test_locked_dropout(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(EMBEDDING_DROPOUT))
def test_embedding_dropout(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(ATTENTION))
def test_attention(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(SEARCH))
def test_search(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(LANGUAGE_MODEL))
def test_language_model(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(CLASSIFIER))
def test_classifier(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(TAGGER))
def test_tagger(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(SEQ2SEQ))
def test_seq2seq(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(TBPTT))
def test_tbptt_module(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(CALLBACKS))
def test_callbacks(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(DATA_MODULES))
def test_data_modules(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(DATA_FUNCTIONS))
def test_data_functions(call, error, match):
    _run(call, error, match)


@pytest.mark.parametrize(("call", "error", "match"), _params(VOCABS))
def test_vocabularies(call, error, match):
    _run(call, error, match)


def test_case_count():
    """The audit's size (reported in the changelog); every table is non-empty."""
    assert all(TABLES.values())
    assert sum(map(len, TABLES.values())) >= 200
