import pytest
import torch

from lightning_rnn.nn.rnn import RNNStack
from lightning_rnn.nn.search import beam_search
from lightning_rnn.nn.seq2seq import (
    AttentionDecoder,
    Bridge,
    EncoderDecoder,
    Seq2SeqEncoder,
    stack_directions,
)

PAD, BOS, EOS = 0, 1, 2
ATTENTIONS = ["bahdanau", "luong_dot", "luong_general", "luong_concat", "none"]


def make_model(attention="bahdanau", cell="lstm", enc_layers=2, dec_layers=2, hidden=12, tie=False):
    enc = Seq2SeqEncoder(15, 8, hidden // 2 if attention == "luong_dot" else hidden, enc_layers, cell=cell,
                         bidirectional=True, padding_idx=PAD)
    dec = AttentionDecoder(13, 8, hidden, enc.output_size if attention != "luong_dot" else hidden, dec_layers,
                           cell=cell, attention=attention, tie_weights=tie, padding_idx=PAD)
    if attention == "luong_dot":
        dec = AttentionDecoder(13, 8, enc.output_size, enc.output_size, dec_layers, cell=cell, attention=attention)
    bridge = Bridge(cell, enc.hidden_size, enc_layers, True, cell, dec.hidden_size, dec_layers)
    return EncoderDecoder(enc, dec, bridge, bos_id=BOS, eos_id=EOS, pad_id=PAD).eval()


def batch(n=4, s=7, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, s + 1, (n,), generator=g)
    lengths[0] = s
    src = torch.randint(3, 15, (n, s), generator=g)
    src[torch.arange(s)[None] >= lengths[:, None]] = PAD
    tgt_in = torch.randint(3, 13, (n, t), generator=g)
    tgt_in[:, 0] = BOS
    return src, lengths, tgt_in


def pad_more(src, extra):
    return torch.cat([src, torch.full((src.size(0), extra), PAD)], 1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_encoder_final_state_comes_from_true_last_token(cell):
    enc = Seq2SeqEncoder(15, 6, 5, 2, cell=cell, bidirectional=True, padding_idx=PAD).eval()
    src, lengths, _ = batch(n=5, s=9)
    src = src.masked_fill(src == PAD, 7)  # garbage (not PAD) in the padded positions
    out, state = enc(src, lengths)
    h = state[0] if cell == "lstm" else state
    for i, n in enumerate(lengths.tolist()):
        out_i, state_i = enc(src[i : i + 1, :n], lengths[i : i + 1])
        h_i = state_i[0] if cell == "lstm" else state_i
        torch.testing.assert_close(h[:, i], h_i[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[i, :n], out_i[0], rtol=1e-5, atol=1e-6)
        assert (out[i, n:] == 0).all()
    # the backward direction of layer 0 at position 0 reads the whole row from its last real token
    assert isinstance(enc.rnn, RNNStack)


def test_stack_directions_pairs_directions_of_the_same_layer():
    h = torch.randn(6, 2, 4)  # L=3, D=2
    st = stack_directions(h, 3, 2)
    for layer in range(3):
        torch.testing.assert_close(st[layer], torch.cat([h[2 * layer], h[2 * layer + 1]], -1))


def test_bridge_projection_per_layer_and_cell_state():
    bridge = Bridge("lstm", 4, 2, True, "lstm", 6, 2)
    h, c = torch.randn(4, 3, 4), torch.randn(4, 3, 4)
    out = bridge((h, c))
    assert len(out) == 2
    for i in range(2):
        hi, ci = out[i]
        torch.testing.assert_close(hi, torch.tanh(bridge.h_proj[i](torch.cat([h[2 * i], h[2 * i + 1]], -1))))
        torch.testing.assert_close(ci, bridge.c_proj[i](torch.cat([c[2 * i], c[2 * i + 1]], -1)))
    # a GRU encoder feeding a 3-layer LSTM decoder: top layers line up, c starts at zero
    b2 = Bridge("gru", 4, 2, False, "lstm", 5, 3)
    out2 = b2(torch.randn(2, 3, 4))
    assert [b2.source_layer(i) for i in range(3)] == [0, 0, 1]
    assert all(s[1].eq(0).all() for s in out2)
    zeros = Bridge("lstm", 4, 2, True, "gru", 6, 1, mode="zeros")((h, c))
    assert zeros[0].shape == (3, 6) and zeros[0].eq(0).all()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_and_batch_mates_change_nothing(attention):
    model = make_model(attention)
    src, lengths, tgt_in = batch()
    logits, attn = model(src, lengths, tgt_in)
    logits_w, attn_w = model(pad_more(src, 6), lengths, tgt_in)
    torch.testing.assert_close(logits_w, logits, rtol=1e-5, atol=1e-6)
    if attention == "none":
        assert attn is None and attn_w is None
    else:
        torch.testing.assert_close(attn_w[..., : src.size(1)], attn, rtol=1e-5, atol=1e-6)
        mask = torch.arange(src.size(1) + 6)[None] < lengths[:, None]
        assert (attn_w.masked_select(~mask[:, None, :]) == 0).all()
        torch.testing.assert_close(attn_w.sum(-1), torch.ones(attn_w.shape[:2]))
    for i, n in enumerate(lengths.tolist()):  # each row alone, unpadded
        l_i, a_i = model(src[i : i + 1, :n], lengths[i : i + 1], tgt_in[i : i + 1])
        torch.testing.assert_close(l_i[0], logits[i], rtol=1e-5, atol=1e-5)
        if a_i is not None:
            torch.testing.assert_close(a_i[0], attn[i, :, :n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_decoded_output_independent_of_padding_and_batch(attention):
    model = make_model(attention)
    src, lengths, _ = batch(n=5, seed=3)
    for beam in (1, 3):
        out = model.generate(src, lengths, beam_size=beam, max_len=8, return_attention=True)
        out_w = model.generate(pad_more(src, 4), lengths, beam_size=beam, max_len=8, return_attention=True)
        assert out.tokens.tolist() == out_w.tokens.tolist()
        for i, n in enumerate(lengths.tolist()):
            row = model.generate(src[i : i + 1, :n], lengths[i : i + 1], beam_size=beam, max_len=8)
            t = row.tokens.size(-1)
            assert out.tokens[i, ..., :t].tolist() == row.tokens[0].tolist()
            assert (out.tokens[i, ..., t:] == PAD).all()


def test_beam_one_equals_greedy_on_the_model():
    model = make_model("luong_general")
    src, lengths, _ = batch(n=6, seed=5)
    g = model.generate(src, lengths, beam_size=1, max_len=10)  # greedy_search
    memory, state = model.encode(src, lengths)
    b = beam_search(model._log_prob_step, state, memory, batch_size=6, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                    max_len=10, beam_size=1)
    assert b.tokens[:, 0, : g.tokens.size(1)].tolist() == g.tokens.tolist()
    torch.testing.assert_close(b.log_probs[:, 0], g.log_probs)


def test_teacher_forcing_zero_feeds_own_argmax():
    model = make_model("bahdanau")
    src, lengths, tgt_in = batch()
    tf1, _ = model(src, lengths, tgt_in, teacher_forcing=1.0)
    tf0, _ = model(src, lengths, tgt_in, teacher_forcing=0.0)
    # ground truth: step by step, feeding gold (tf=1) or the previous argmax (tf=0)
    memory, state = model.encode(src, lengths)
    s1 = s0 = state
    tok1 = tok0 = tgt_in[:, 0]
    for t in range(tgt_in.size(1)):
        l1, s1, _ = model.decoder.step(s1, tok1, memory)
        l0, s0, _ = model.decoder.step(s0, tok0, memory)
        torch.testing.assert_close(tf1[:, t], l1)
        torch.testing.assert_close(tf0[:, t], l0)
        if t + 1 < tgt_in.size(1):
            tok1, tok0 = tgt_in[:, t + 1], l0.argmax(-1)
    torch.testing.assert_close(tf0[:, 0], tf1[:, 0])
    assert not torch.allclose(tf0[:, 1:], tf1[:, 1:])


@pytest.mark.parametrize("attention", ["bahdanau", "luong_dot", "none"])
def test_gradients_reach_encoder_decoder_and_bridge(attention):
    model = make_model(attention, tie=attention == "bahdanau").train()
    src, lengths, tgt_in = batch()
    logits, _ = model(src, lengths, tgt_in)
    logits.logsumexp(-1).sum().backward()
    groups = {
        "encoder.embedding": model.encoder.embedding.weight,
        "encoder.rnn.l0": model.encoder.rnn.weight_hh_l0,
        "encoder.rnn.l1_reverse": model.encoder.rnn.weight_ih_l1_reverse,
        "bridge": model.bridge.h_proj[0].weight,
        "decoder.cell": model.decoder.cells[0].weight_hh,
        "decoder.embedding": model.decoder.embedding.weight,
    }
    if model.decoder.attention is not None and attention != "luong_dot":
        groups["attention"] = next(model.decoder.attention.parameters())
    for name, p in groups.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tied_embeddings_share_the_parameter():
    model = make_model("bahdanau", tie=True)
    assert model.decoder.generator.weight is model.decoder.embedding.weight
    assert model.decoder.output_size == 8


def test_one_to_many_context_decoder():
    dec = AttentionDecoder(11, 6, 10, memory_size=16, attention="bahdanau", cell="gru").eval()
    feats = torch.randn(3, 5, 16)
    tgt = torch.randint(0, 11, (3, 4))
    logits, attn, _ = dec(tgt, dec.prepare_memory(feats))
    assert logits.shape == (3, 4, 11) and attn.shape == (3, 4, 5)
    # a single feature vector per row is a memory of one slot: weight 1, context = the vector
    _, attn1, _ = dec(tgt, dec.prepare_memory(feats[:, 0]))
    assert attn1.eq(1).all()
    # the conditioning matters: other features give other logits
    logits2, _, _ = dec(tgt, dec.prepare_memory(torch.randn(3, 5, 16)))
    assert not torch.allclose(logits, logits2)


def test_bad_input():
    model = make_model("bahdanau")
    src, lengths, tgt_in = batch()
    with pytest.raises(ValueError, match=r"same batch size"):
        model(src, lengths, tgt_in[:2])
    with pytest.raises(ValueError, match=r"src_lengths <= padded length 7, got 9"):
        model(src, torch.tensor([9, 1, 1, 1]), tgt_in)
    with pytest.raises(ValueError, match=r"src_lengths >= 1, got 0"):
        model(src, torch.tensor([7, 0, 1, 1]), tgt_in)
    bad = src.clone()
    bad[1, 0] = 40
    with pytest.raises(ValueError, match=r"vocab size 15\), got largest id 40"):
        model(bad, lengths, tgt_in)
    bad_tgt = tgt_in.clone()
    bad_tgt[2, 1] = 13
    with pytest.raises(ValueError, match=r"vocab size 13\), got largest id 13"):
        model(src, lengths, bad_tgt)
    with pytest.raises(ValueError, match=r"\['bahdanau', 'luong_dot', 'luong_general', 'luong_concat', 'none'\]"):
        AttentionDecoder(10, 4, 4, 4, attention="additive")
    with pytest.raises(ValueError, match="Expected beam_size to be an int >= 1, got 0"):
        model.generate(src, lengths, beam_size=0)
    with pytest.raises(ValueError, match="Expected max_len to be an int >= 1, got 0"):
        model.generate(src, lengths, max_len=0)
    with pytest.raises(ValueError, match=r"\['rnn', 'lstm', 'gru'\]"):
        Bridge("lstm", 4, 1, True, "transformer", 4, 1)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_decoder_step_matches_the_papers_ordering(attention):
    dec = AttentionDecoder(9, 4, 6, memory_size=5, num_layers=1, cell="gru", attention=attention).eval()
    keys, mask = torch.randn(2, 3, 5), torch.tensor([[True, True, True], [True, True, False]])
    memory = dec.prepare_memory(keys, mask)
    h0 = torch.randn(2, 6)
    state = dec.init_state(2, (h0,))
    if attention == "luong_general":
        state = state._replace(feed=torch.randn(2, 6))
    tokens = torch.tensor([3, 7])
    logits, new_state, weights = dec.step(state, tokens, memory)
    e = dec.embedding(tokens)
    if attention == "bahdanau":  # query = previous state; context enters the cell
        ctx, w = dec.attention(h0, keys, mask)
        h1 = dec.cells[0](torch.cat([e, ctx], -1), h0)
        out = torch.tanh(dec.out_proj(torch.cat([h1, ctx, e], -1)))
    else:  # cell on [e; h~_{t-1}]; query = current state; h~ = tanh(W [c; h])
        h1 = dec.cells[0](torch.cat([e, state.feed], -1), h0)
        ctx, w = dec.attention(h1, keys, mask)
        out = torch.tanh(dec.out_proj(torch.cat([ctx, h1], -1)))
        torch.testing.assert_close(new_state.feed, out)
    torch.testing.assert_close(weights, w)
    torch.testing.assert_close(new_state.hidden[0], h1)
    torch.testing.assert_close(logits, dec.generator(out))
