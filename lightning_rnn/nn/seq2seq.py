"""Attention encoder-decoder in pure PyTorch: encoder, bridge, attention decoder and their composition.

Pieces (joeynmt-style, each usable alone):

- :class:`Seq2SeqEncoder` — embedding -> :class:`~lightning_rnn.nn.rnn.RNNStack` over the true lengths.
- :class:`Bridge` — encoder final state (D*L_enc, N, H_enc) -> the decoder's initial per-layer state.
- :class:`AttentionDecoder` — embedding -> stacked recurrent cells with Bahdanau or Luong attention
  (or none), one token at a time; conditioned on any memory (encoder outputs, image features, ...).
- :class:`EncoderDecoder` — the three together, with teacher-forced ``forward`` and ``generate``
  (greedy / beam search from :mod:`lightning_rnn.nn.search`).

Symbols: N batch, S source length, T target length, E embedding size, H hidden size, D directions,
L layers, K memory (key) size, V vocabulary size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_rnn._validation import check_bool, check_choice, check_int, check_probability
from lightning_rnn._validation import check_token_ids as _check_token_ids
from lightning_rnn.nn._cells import CELLS
from lightning_rnn.nn.attention import BahdanauAttention, LuongAttention, padding_mask
from lightning_rnn.nn.rnn import RNNStack
from lightning_rnn.nn.search import SearchOutput, beam_search, greedy_search, max_lengths

__all__ = [
    "ATTENTION_TYPES",
    "AttentionDecoder",
    "Bridge",
    "DecoderState",
    "EncoderDecoder",
    "Memory",
    "Seq2SeqEncoder",
    "check_token_ids",
]

#: attention name -> (score, ordering)
ATTENTION_TYPES: dict[str, tuple[str | None, str | None]] = {
    "bahdanau": ("additive", "bahdanau"),
    "luong_dot": ("dot", "luong"),
    "luong_general": ("general", "luong"),
    "luong_concat": ("concat", "luong"),
    "none": (None, None),
}
ORDERINGS = ("bahdanau", "luong")
BRIDGES = ("projection", "zeros")

LayerState = Tensor | tuple[Tensor, Tensor]  # (N, H) or LSTM (h, c)


class Memory(NamedTuple):
    """What the decoder attends to, prepared once per source (every tensor batch-first).

    Attributes:
        keys: (N, S, K) encoder outputs or context features (also the values).
        mask: (N, S) bool, ``True`` on real positions, or ``None`` (all real).
        projected_keys: (N, S, A) the attention's ``project_keys(keys)``, or ``None`` without attention.
    """

    keys: Tensor
    mask: Tensor | None
    projected_keys: Tensor | None


class DecoderState(NamedTuple):
    """Recurrent state of :class:`AttentionDecoder` between steps (every tensor batch-first).

    Attributes:
        hidden: one entry per layer: (N, H), or ``(h, c)`` each (N, H) for LSTM.
        feed: (N, F) the previous attentional vector (Luong input feeding), or (N, 0) when unused.
    """

    hidden: tuple[LayerState, ...]
    feed: Tensor


def check_token_ids(ids: Tensor, vocab_size: int, name: str) -> None:
    """Raise ``ValueError`` naming the largest (or smallest) id when ``ids`` fall outside ``[0, vocab_size)``."""
    _check_token_ids(name, ids, vocab_size)


def check_lengths(lengths: Tensor, batch_size: int, max_len: int, name: str = "src_lengths") -> None:
    """Validate a (N,) lengths tensor against a padded batch of width ``max_len``."""
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.numel() != batch_size:
        shape = list(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"Expected {name} of shape ({batch_size},), got {shape}")
    if lengths.is_floating_point():
        raise TypeError(f"Expected {name} to be an integer tensor, got dtype {lengths.dtype}")
    if batch_size and int(lengths.max()) > max_len:
        raise ValueError(f"Expected {name} <= padded length {max_len}, got {int(lengths.max())}")
    if batch_size and int(lengths.min()) < 1:
        raise ValueError(f"Expected {name} >= 1, got {int(lengths.min())}")


class Seq2SeqEncoder(nn.Module):
    """Embedding followed by an :class:`RNNStack` run over each row's true length (packed).

    Args:
        vocab_size: V_src.
        embedding_dim: E.
        hidden_size: H per direction.
        num_layers: L.
        cell: ``"rnn"`` | ``"lstm"`` | ``"gru"``.
        bidirectional: D = 2 if True.
        padding_idx: embedding row kept at zero (the PAD id).
        input_dropout, layer_dropout, output_dropout, recurrent_dropout, recurrent_dropout_mode, residual:
            passed to :class:`RNNStack` (all step-tied).

    Inputs: src, lengths
        src: (N, S) token ids, padded.
        lengths: (N,) true lengths in [1, S].

    Outputs: outputs, state
        outputs: (N, S, D*H), exactly 0 past each row's length.
        state: final state (D*L, N, H) (``(h, c)`` for LSTM), taken at each row's last real token (the
            backward direction reads the row from its last real token).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        cell: str = "lstm",
        bidirectional: bool = True,
        padding_idx: int | None = None,
        input_dropout: float = 0.0,
        layer_dropout: float = 0.0,
        output_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        recurrent_dropout_mode: str = "weight",
        residual: bool | str = False,
        zoneout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, min=1)
        self.embedding = nn.Embedding(vocab_size, check_int("embedding_dim", embedding_dim, min=1), padding_idx=padding_idx)
        self.rnn = RNNStack(
            cell,
            embedding_dim,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            batch_first=True,
            residual=residual,
            input_dropout=input_dropout,
            layer_dropout=layer_dropout,
            output_dropout=output_dropout,
            recurrent_dropout=recurrent_dropout,
            recurrent_dropout_mode=recurrent_dropout_mode,
            zoneout=zoneout,
            bias=bias,
        )
        self.cell = self.rnn.cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_directions = self.rnn.num_directions
        self.output_size = self.rnn.output_size

    def forward(
        self, src: Tensor, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """Inputs: src (N, S) ids; lengths (N,), or None when every row has all S steps (the unpacked path
        ``torch.export`` / ONNX export trace). Outputs: outputs (N, S, D*H), the final state."""
        if src.dim() != 2:
            raise ValueError(f"Expected src of shape (N, S), got {list(src.shape)}")
        if lengths is not None:
            check_lengths(lengths, src.size(0), src.size(1))
        if not torch.compiler.is_compiling():  # a data-dependent check: not part of a traced graph
            check_token_ids(src, self.vocab_size, "src")
        emb = self.embedding(src)  # (N, S, E)
        outputs, state = self.rnn(emb, lengths=lengths)  # (N, S, D*H)
        return outputs, state


def stack_directions(h: Tensor, num_layers: int, num_directions: int) -> Tensor:
    """(D*L, N, H) -> (L, N, D*H): forward and backward states of the SAME layer side by side.

    torch lays states out as ``index = layer * D + direction``; a plain ``view(L, N, D*H)`` would pair
    states of different layers (OpenNMT-py #326).

    Example::

        >>> h = torch.arange(4.0).view(4, 1, 1)  # L=2, D=2: [l0 fwd, l0 bwd, l1 fwd, l1 bwd]
        >>> stack_directions(h, 2, 2).squeeze(1).tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    dl, n, hidden = h.shape
    if dl != num_layers * num_directions:
        raise ValueError(f"Expected state of first size {num_layers * num_directions}, got {dl}")
    return h.view(num_layers, num_directions, n, hidden).transpose(1, 2).reshape(num_layers, n, num_directions * hidden)


class Bridge(nn.Module):
    """Map an encoder's final state to an :class:`AttentionDecoder`'s initial per-layer state.

    Decoder layer ``i`` (of ``L_dec``) takes encoder layer ``max(0, L_enc - L_dec + i)`` (the top layers
    line up), with the forward and backward states of that layer concatenated. ``"projection"``:
    ``h = tanh(W_i [h_fwd; h_bwd] + b_i)`` and for an LSTM decoder ``c = U_i [c_fwd; c_bwd] + b'_i``
    (zeros when the encoder has no cell state); ``"zeros"``: all zeros. Sizes and cells may differ.

    Inputs: state
        state: encoder final state (D*L_enc, N, H_enc), or ``(h, c)``.

    Outputs: hidden
        tuple of L_dec entries, each (N, H_dec) or ``(h, c)`` for an LSTM decoder.
    """

    def __init__(
        self,
        encoder_cell: str,
        encoder_hidden_size: int,
        encoder_num_layers: int,
        encoder_bidirectional: bool,
        decoder_cell: str,
        decoder_hidden_size: int,
        decoder_num_layers: int,
        mode: str = "projection",
    ) -> None:
        super().__init__()
        self.encoder_cell = check_choice("encoder_cell", encoder_cell, CELLS, lower=True)
        self.decoder_cell = check_choice("decoder_cell", decoder_cell, CELLS, lower=True)
        self.mode = check_choice("bridge", mode, BRIDGES, lower=True)
        self.encoder_num_layers = check_int("encoder_num_layers", encoder_num_layers, min=1)
        self.decoder_num_layers = check_int("decoder_num_layers", decoder_num_layers, min=1)
        self.num_directions = 2 if encoder_bidirectional else 1
        self.decoder_hidden_size = decoder_hidden_size
        in_size = self.num_directions * encoder_hidden_size
        self.h_proj = nn.ModuleList()
        self.c_proj = nn.ModuleList()
        if self.mode == "projection":
            self.h_proj.extend(nn.Linear(in_size, decoder_hidden_size) for _ in range(decoder_num_layers))
            if self.decoder_cell == "lstm" and self.encoder_cell == "lstm":
                self.c_proj.extend(nn.Linear(in_size, decoder_hidden_size) for _ in range(decoder_num_layers))

    def source_layer(self, i: int) -> int:
        return max(0, self.encoder_num_layers - self.decoder_num_layers + i)

    def forward(self, state: Tensor | tuple[Tensor, Tensor]) -> tuple[LayerState, ...]:
        h_enc, c_enc = state if isinstance(state, tuple) else (state, None)
        n = h_enc.size(1)
        zeros = h_enc.new_zeros(n, self.decoder_hidden_size)
        if self.mode == "zeros":
            h_layers = [zeros] * self.decoder_num_layers
            c_layers = [zeros] * self.decoder_num_layers
        else:
            hs = stack_directions(h_enc, self.encoder_num_layers, self.num_directions)  # (L_enc, N, D*H)
            h_layers = [torch.tanh(p(hs[self.source_layer(i)])) for i, p in enumerate(self.h_proj)]
            if len(self.c_proj) and c_enc is not None:
                cs = stack_directions(c_enc, self.encoder_num_layers, self.num_directions)
                c_layers = [p(cs[self.source_layer(i)]) for i, p in enumerate(self.c_proj)]
            else:
                c_layers = [zeros] * self.decoder_num_layers
        if self.decoder_cell == "lstm":
            return tuple((h, c) for h, c in zip(h_layers, c_layers))
        return tuple(h_layers)


class AttentionDecoder(nn.Module):
    """Recurrent decoder with attention, stepping one token at a time.

    Orderings (``attention`` picks a score and its usual ordering; ``ordering`` overrides the latter):

    - ``"bahdanau"`` (Bahdanau et al. 2014): query = previous top state ``h_{t-1}``; the context ``c_t``
      is fed into the first cell with the embedding; output ``o_t = tanh(W_o [h_t; c_t; e_t])``.
    - ``"luong"`` (Luong et al. 2015): the cells run on ``[e_t; h~_{t-1}]`` (input feeding; just ``e_t``
      with ``input_feeding=False``); query = current top state ``h_t``; attentional hidden state
      ``h~_t = tanh(W_c [c_t; h_t])`` is the output.
    - ``attention="none"``: a plain decoder (Sutskever et al. 2014) conditioned only through its initial
      state; ``o_t = tanh(W_o [h_t; e_t])``.

    Logits are ``W_s dropout(o_t)``; with ``tie_weights`` ``W_s`` is the embedding matrix (the output
    vector then has size E instead of H).

    The memory can be anything with a batch dimension: encoder outputs with their padding mask, or, for
    one-to-many generation (captioning), a set of feature vectors (N, S, K) or a single vector (N, K)::

        >>> dec = AttentionDecoder(vocab_size=20, embedding_dim=8, hidden_size=16, memory_size=32)
        >>> image_features = torch.randn(2, 49, 32)  # e.g. a 7x7 CNN grid per image
        >>> memory = dec.prepare_memory(image_features)  # no mask: every position is real
        >>> captions_in = torch.randint(0, 20, (2, 5))  # BOS + caption tokens
        >>> logits, attention, _ = dec(captions_in, memory)
        >>> logits.shape, attention.shape
        (torch.Size([2, 5, 20]), torch.Size([2, 5, 49]))
        >>> logits, attention, _ = dec(captions_in, dec.prepare_memory(image_features.mean(1)))  # (N, K)
        >>> attention.shape
        torch.Size([2, 5, 1])

    Args:
        vocab_size: V.
        embedding_dim: E.
        hidden_size: H of every decoder layer.
        memory_size: K, feature size of the memory (``D*H_enc`` for an RNN encoder).
        num_layers: L_dec.
        cell: ``"rnn"`` | ``"lstm"`` | ``"gru"``.
        attention: ``"bahdanau"`` | ``"luong_dot"`` | ``"luong_general"`` | ``"luong_concat"`` | ``"none"``.
        ordering: ``None`` (the attention's own) | ``"bahdanau"`` | ``"luong"``.
        attention_size: A for additive / concat scores (default H).
        input_feeding: Luong input feeding of ``h~_{t-1}``.
        dropout: on the embeddings, between layers and on the output vector (per step).
        tie_weights: share the output projection with the input embedding.
        padding_idx: embedding row kept at zero.

    Inputs: tgt_in, memory, state, teacher_forcing
        tgt_in: (N, T) decoder inputs (BOS + target without its last token).
        memory: :class:`Memory` from :meth:`prepare_memory` (may be ``None`` with ``attention="none"``).
        state: :class:`DecoderState` (default :meth:`init_state` with zeros).
        teacher_forcing: probability of feeding the gold token at steps t >= 1 (per row and step);
            otherwise the model's own previous argmax is fed (scheduled sampling).

    Outputs: logits, attention, state
        logits: (N, T, V).
        attention: (N, T, S) weights, or ``None`` without attention.
        state: final :class:`DecoderState`.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        memory_size: int,
        num_layers: int = 1,
        *,
        cell: str = "lstm",
        attention: str = "bahdanau",
        ordering: str | None = None,
        attention_size: int | None = None,
        input_feeding: bool = True,
        dropout: float = 0.0,
        tie_weights: bool = False,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, min=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, min=1)
        self.hidden_size = check_int("hidden_size", hidden_size, min=1)
        self.memory_size = check_int("memory_size", memory_size, min=1)
        self.num_layers = check_int("num_layers", num_layers, min=1)
        self.cell = check_choice("cell", cell, CELLS, lower=True)
        self.attention_type = check_choice("attention", attention, ATTENTION_TYPES, lower=True)
        score, default_ordering = ATTENTION_TYPES[self.attention_type]
        if ordering is not None:
            if score is None:
                raise ValueError(f"Expected ordering=None with attention='none', got {ordering!r}")
            default_ordering = check_choice("ordering", ordering, ORDERINGS, lower=True)
        self.ordering = default_ordering
        check_probability("dropout", dropout)
        self.input_feeding = check_bool("input_feeding", input_feeding) and self.ordering == "luong"
        self.tie_weights = check_bool("tie_weights", tie_weights)
        self.output_size = embedding_dim if tie_weights else hidden_size  # F

        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.attention: nn.Module | None = None
        if score == "additive":
            self.attention = BahdanauAttention(hidden_size, memory_size, attention_size or hidden_size)
        elif score is not None:
            if score == "dot" and hidden_size != memory_size:
                raise ValueError(
                    f"Expected hidden_size == memory_size for attention='luong_dot', got {hidden_size} and "
                    f"{memory_size} (use 'luong_general' when they differ)"
                )
            self.attention = LuongAttention(hidden_size, memory_size, score, hidden_size=attention_size)

        if self.ordering == "bahdanau":
            cell_input = embedding_dim + memory_size
            self.out_proj = nn.Linear(hidden_size + memory_size + embedding_dim, self.output_size)
        elif self.ordering == "luong":
            cell_input = embedding_dim + (self.output_size if self.input_feeding else 0)
            self.out_proj = nn.Linear(memory_size + hidden_size, self.output_size)
        else:
            cell_input = embedding_dim
            self.out_proj = nn.Linear(hidden_size + embedding_dim, self.output_size)
        cell_cls = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[self.cell]
        self.cells = nn.ModuleList(
            cell_cls(cell_input if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.dropout = nn.Dropout(float(dropout))
        self.generator = nn.Linear(self.output_size, vocab_size, bias=True)
        if self.tie_weights:
            self.generator.weight = self.embedding.weight

    # ------------------------------------------------------------------ setup
    def prepare_memory(self, memory: Tensor, mask: Tensor | None = None) -> Memory:
        """Wrap keys (N, S, K) or one vector per row (N, K) with their mask and projected keys.

        Inputs:
            memory: (N, S, K) or (N, K).
            mask: (N, S) bool, ``True`` on real positions, or ``None``.

        Outputs:
            :class:`Memory`.
        """
        if memory.dim() == 2:
            memory = memory.unsqueeze(1)  # (N, 1, K)
        if memory.dim() != 3 or memory.size(-1) != self.memory_size:
            raise ValueError(f"Expected memory of shape (N, S, {self.memory_size}) or (N, {self.memory_size}), got {list(memory.shape)}")
        if mask is not None and mask.shape != memory.shape[:2]:
            raise ValueError(f"Expected mask of shape {list(memory.shape[:2])}, got {list(mask.shape)}")
        projected = self.attention.project_keys(memory) if self.attention is not None else None
        return Memory(memory, mask, projected)

    def init_state(self, batch_size: int, hidden: tuple[LayerState, ...] | None = None, *, like: Tensor | None = None) -> DecoderState:
        """Initial :class:`DecoderState`: the given per-layer ``hidden`` (e.g. from a :class:`Bridge`) or zeros."""
        ref = like if like is not None else self.generator.weight
        zeros = ref.new_zeros(batch_size, self.hidden_size)
        if hidden is None:
            hidden = tuple((zeros, zeros) if self.cell == "lstm" else zeros for _ in range(self.num_layers))
        if len(hidden) != self.num_layers:
            raise ValueError(f"Expected {self.num_layers} per-layer states, got {len(hidden)}")
        feed = ref.new_zeros(batch_size, self.output_size if self.input_feeding else 0)
        return DecoderState(tuple(hidden), feed)

    # ------------------------------------------------------------------ one step
    def _run_cells(self, x: Tensor, hidden: tuple[LayerState, ...]) -> tuple[Tensor, tuple[LayerState, ...]]:
        new_hidden: list[LayerState] = []
        for i, cell in enumerate(self.cells):
            if i > 0:
                x = self.dropout(x)
            s = cell(x, hidden[i])  # (N, H) or (h, c)
            new_hidden.append(s)
            x = s[0] if isinstance(s, tuple) else s
        return x, tuple(new_hidden)

    @staticmethod
    def _top(hidden: tuple[LayerState, ...]) -> Tensor:
        top = hidden[-1]
        return top[0] if isinstance(top, tuple) else top

    def step(self, state: DecoderState, tokens: Tensor, memory: Memory | None) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One decoder step.

        Inputs:
            state: :class:`DecoderState`.
            tokens: (N,) previous tokens.
            memory: :class:`Memory` (``None`` allowed without attention).

        Outputs: logits, state, weights
            logits: (N, V); state: the new :class:`DecoderState`; weights: (N, S) or ``None``.
        """
        emb = self.dropout(self.embedding(tokens))  # (N, E)
        weights = None
        if self.attention is not None and memory is None:
            raise ValueError(f"Expected a memory for attention={self.attention_type!r}, got None")
        if self.ordering == "bahdanau":
            query = self._top(state.hidden)  # h_{t-1} (N, H)
            context, weights = self.attention(query, memory.keys, memory.mask, memory.projected_keys)  # (N, K)
            h, hidden = self._run_cells(torch.cat([emb, context], dim=-1), state.hidden)
            out = torch.tanh(self.out_proj(torch.cat([h, context, emb], dim=-1)))  # (N, F)
        elif self.ordering == "luong":
            x = torch.cat([emb, state.feed], dim=-1) if self.input_feeding else emb
            h, hidden = self._run_cells(x, state.hidden)  # h_t (N, H)
            context, weights = self.attention(h, memory.keys, memory.mask, memory.projected_keys)
            out = torch.tanh(self.out_proj(torch.cat([context, h], dim=-1)))  # h~_t (N, F)
        else:
            h, hidden = self._run_cells(emb, state.hidden)
            out = torch.tanh(self.out_proj(torch.cat([h, emb], dim=-1)))
        feed = out if self.input_feeding else state.feed
        logits = self.generator(self.dropout(out))  # (N, V)
        return logits, DecoderState(hidden, feed), weights

    # ------------------------------------------------------------------ whole target
    def forward(
        self,
        tgt_in: Tensor,
        memory: Memory | None,
        state: DecoderState | None = None,
        teacher_forcing: float = 1.0,
    ) -> tuple[Tensor, Tensor | None, DecoderState]:
        if tgt_in.dim() != 2:
            raise ValueError(f"Expected tgt_in of shape (N, T), got {list(tgt_in.shape)}")
        if not 0.0 <= float(teacher_forcing) <= 1.0:
            raise ValueError(f"Expected teacher_forcing in [0, 1], got {teacher_forcing!r}")
        n, t_len = tgt_in.shape
        if memory is not None and memory.keys.size(0) != n:
            raise ValueError(f"Expected memory batch size {n} (= tgt_in's), got {memory.keys.size(0)}")
        if state is None:
            state = self.init_state(n, like=memory.keys if memory is not None else None)
        logits_steps: list[Tensor] = []
        attn_steps: list[Tensor] = []
        tokens = tgt_in[:, 0]
        for t in range(t_len):
            if t > 0:
                tokens = tgt_in[:, t]
                if teacher_forcing < 1.0:
                    own = logits_steps[-1].detach().argmax(dim=-1)  # (N,)
                    gold = torch.rand(n, device=tgt_in.device) < teacher_forcing
                    tokens = torch.where(gold, tokens, own)
            logits, state, weights = self.step(state, tokens, memory)
            logits_steps.append(logits)
            if weights is not None:
                attn_steps.append(weights)
        logits = torch.stack(logits_steps, dim=1)  # (N, T, V)
        attention = torch.stack(attn_steps, dim=1) if attn_steps else None  # (N, T, S)
        return logits, attention, state


class EncoderDecoder(nn.Module):
    """Encoder, bridge and decoder together: teacher-forced training and greedy / beam generation.

    Args:
        encoder: :class:`Seq2SeqEncoder`.
        decoder: :class:`AttentionDecoder` whose ``memory_size`` is the encoder's ``output_size``.
        bridge: :class:`Bridge` (``None``: the decoder starts from zeros).
        bos_id / eos_id / pad_id: special target ids.

    Inputs: src, src_lengths, tgt_in, teacher_forcing
        src: (N, S) padded source ids; src_lengths: (N,); tgt_in: (N, T) BOS + target.

    Outputs: logits, attention
        logits: (N, T, V_tgt); attention: (N, T, S) or ``None``.

    Example::

        >>> enc = Seq2SeqEncoder(10, 8, 16, bidirectional=True, padding_idx=0)
        >>> dec = AttentionDecoder(12, 8, 16, memory_size=enc.output_size, attention="luong_general")
        >>> bridge = Bridge("lstm", 16, 1, True, "lstm", 16, 1)
        >>> model = EncoderDecoder(enc, dec, bridge, bos_id=1, eos_id=2, pad_id=0)
        >>> src, lengths = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
        >>> logits, attention = model(src, lengths, torch.tensor([[1, 5, 4], [1, 7, 6]]))
        >>> logits.shape, attention[1, :, 2].tolist()
        (torch.Size([2, 3, 12]), [0.0, 0.0, 0.0])
        >>> model.generate(src, lengths, beam_size=3, max_len=4).tokens.shape[:2]
        torch.Size([2, 1])
    """

    def __init__(
        self,
        encoder: Seq2SeqEncoder,
        decoder: AttentionDecoder,
        bridge: Bridge | None = None,
        *,
        bos_id: int = 1,
        eos_id: int = 2,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if decoder.memory_size != encoder.output_size:
            raise ValueError(
                f"Expected decoder.memory_size == encoder.output_size ({encoder.output_size}), got {decoder.memory_size}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.bridge = bridge
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """Run the encoder; return the decoder's memory and initial state."""
        outputs, enc_state = self.encoder(src, src_lengths)  # (N, S, D*H)
        mask = padding_mask(src_lengths.to(src.device), src.size(1))  # (N, S)
        memory = self.decoder.prepare_memory(outputs, mask)
        hidden = self.bridge(enc_state) if self.bridge is not None else None
        return memory, self.decoder.init_state(src.size(0), hidden, like=outputs)

    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0
    ) -> tuple[Tensor, Tensor | None]:
        if tgt_in.dim() != 2 or tgt_in.size(0) != src.size(0):
            raise ValueError(
                f"Expected tgt_in of shape ({src.size(0)}, T) (same batch size as src), got {list(tgt_in.shape)}"
            )
        check_token_ids(tgt_in, self.decoder.vocab_size, "tgt_in")
        memory, state = self.encode(src, src_lengths)
        logits, attention, _ = self.decoder(tgt_in, memory, state, teacher_forcing)
        return logits, attention

    def _log_prob_step(self, state: DecoderState, tokens: Tensor, memory: Memory) -> tuple[Tensor, DecoderState, Tensor | None]:
        logits, state, weights = self.decoder.step(state, tokens, memory)
        return F.log_softmax(logits.float(), dim=-1), state, weights

    @torch.no_grad()
    def generate(
        self,
        src: Tensor,
        src_lengths: Tensor,
        *,
        beam_size: int = 1,
        max_len: int = 100,
        max_ratio: float | None = None,
        n_best: int = 1,
        alpha: float = 0.0,
        length_penalty_type: str = "gnmt",
        return_attention: bool = False,
    ) -> SearchOutput:
        """Decode greedily (``beam_size=1``) or with beam search.

        Inputs:
            src: (N, S); src_lengths: (N,).

        Outputs:
            :class:`~lightning_rnn.nn.search.SearchOutput`; with ``beam_size=1`` tokens (N, T), otherwise
            (N, n_best, T). Tokens include EOS when generated; lengths count it.
        """
        check_int("beam_size", beam_size, min=1)
        check_int("max_len", max_len, min=1)
        memory, state = self.encode(src, src_lengths)
        n = src.size(0)
        limits = max_lengths(n, max_len, src_lengths=src_lengths, max_ratio=max_ratio, device=src.device)
        common = dict(
            batch_size=n, bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, max_len=limits,
            return_attention=return_attention, device=src.device,
        )
        if beam_size == 1 and n_best == 1:
            return greedy_search(self._log_prob_step, state, memory, **common)
        return beam_search(
            self._log_prob_step, state, memory, beam_size=beam_size, n_best=n_best, alpha=alpha,
            length_penalty_type=length_penalty_type, **common,
        )
