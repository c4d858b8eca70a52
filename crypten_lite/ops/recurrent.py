"""Layer L4: recurrent layers — LSTM, GRU, Elman RNN and their cells, kept whole.

On CPU, ``nn.LSTM`` reaches the dispatch table as the fused oneDNN kernel
``aten.mkldnn_rnn_layer`` (with an opaque workspace for its fused backward), and the cells and
``nn.GRU`` as decompositions with ``unsafe_split``. Instead, the torch-level calls the modules
make (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``, ``torch.rnn_relu`` and the four
``*_cell`` functions) are replaced whole (:func:`~crypten_lite.tensor.implements_function`) by
the textbook recurrences written with ordinary torch ops, so autograd records primitive ops and
backpropagation through time needs no op of its own. The form is chosen for rounds:

* the input projection ``x W_ih^T + b_ih`` of every time step is one matrix product;
* both directions of a bidirectional layer advance together: time step ``t`` of the forward
  direction and ``T - 1 - t`` of the reverse one are one batched product (``bmm`` over the
  direction axis) and one activation call, so a bidirectional layer costs the rounds of one;
* an LSTM step evaluates its four gates with *one* sigmoid: ``tanh(g) = 2 sigmoid(2g) - 1``
  (the factor 2 is an exact integer product), and ``c' = f c + i g`` is one Beaver round on
  the concatenation ``[f, i] * [c, g]``.

Per step (2 parties): LSTM ``1 + 9 + 1 + 9 + 1 = 21`` rounds (hidden product, gate sigmoid,
cell update, ``tanh(c')``, output gate; measured, 3 parties: 44); GRU ``1 + 9 + 1 + 9 + 1``;
RNN ``1 + 9`` (tanh) or ``1 + 4`` (ReLU). Bytes are dominated by the gate sigmoid (about 130
per gate element and party): ``nn.LSTM(128, 128)`` at batch 16 sends about 2 MB per step and
party (1.4 MB with ``crypten_lite.nn.reuse_weight_masks``, which spares re-masking ``W_hh``
every step in a one-direction layer). Errors are those of the activations (sigmoid ``7e-5``,
tanh ``9.2e-5``; the LSTM's ``tanh(g)`` via the sigmoid ``1.4e-4``), compounded over time
steps through the recurrence, plus a truncation per product (``lstm_b16``: max ``2e-4``).

On a ``PackedSequence`` the two directions run one after the other (their active batches
differ), so a bidirectional layer costs twice the rounds there. ``mkldnn_rnn_layer`` itself
stays unregistered: nothing reaches it once the torch-level calls are replaced.

Supported: ``batch_first`` both ways, any ``num_layers``, ``bidirectional``, ``bias=False``,
LSTM ``proj_size``, inter-layer ``dropout`` in training, initial states given or not (public
zeros), unbatched inputs (the modules add the batch axis), and ``PackedSequence`` inputs
(public lengths, sorted: ``enforce_sorted=False`` sorts with ``index_select``, whose backward
needs ``index_add_``); each time step updates the sequences still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from crypten_lite.ops._common import wrap
from crypten_lite.tensor import MPCTensor, implements, implements_function

aten = torch.ops.aten

__all__: list[str] = []

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


# --------------------------------------------------------------------------- one time step


def _lstm_step(xw: Any, hw: Any, h: Any, c: Any) -> tuple[Any, Any]:
    """``(h', c')`` from the gate pre-activations ``xw + hw`` (``(..., 4H)``: i, f, g, o)."""
    hidden = c.shape[-1]
    gates = xw + hw
    # one sigmoid for all gates: the g block enters doubled, tanh(g) = 2 sigmoid(2g) - 1
    doubling = torch.ones(4 * hidden, dtype=torch.int64)
    doubling[2 * hidden : 3 * hidden] = 2
    s = torch.sigmoid(gates * doubling)
    i, f, g2, o = torch.split(s, hidden, -1)
    g = g2 * 2 - 1
    prods = torch.cat([f, i], -1) * torch.cat([c.expand_as(f), g], -1)
    fc, ig = torch.split(prods, hidden, -1)
    c_new = fc + ig
    return o * torch.tanh(c_new), c_new


def _gru_step(xw: Any, hw: Any, h: Any) -> Any:
    """``h' = n + z (h - n)``, ``n = tanh(x_n + r * h_n)``, ``r, z = sigmoid(x_rz + h_rz)``."""
    hidden = h.shape[-1]
    x_rz, x_n = torch.split(xw, [2 * hidden, hidden], -1)
    h_rz, h_n = torch.split(hw, [2 * hidden, hidden], -1)
    r, z = torch.split(torch.sigmoid(x_rz + h_rz), hidden, -1)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


def _rnn_step(mode: str, xw: Any, hw: Any) -> Any:
    pre = xw + hw
    return torch.tanh(pre) if mode == "rnn_tanh" else torch.relu(pre)


def _step(mode: str, xw: Any, hw: Any, h: Any, c: Any) -> tuple[Any, Any]:
    if mode == "lstm":
        return _lstm_step(xw, hw, h, c)
    if mode == "gru":
        return _gru_step(xw, hw, h), None
    return _rnn_step(mode, xw, hw), None


# --------------------------------------------------------------------------- whole sequences


def _is_packed(args: Sequence[Any]) -> bool:
    """``torch.<mode>(data, batch_sizes, hx, params, ...)`` has the parameter list fourth."""
    return len(args) > 3 and isinstance(args[3], (list, tuple))


def _layer_weights(
    params: Sequence[Any], dirs: int, has_biases: bool
) -> tuple[list[Any], list[Any], list[Any] | None, list[Any] | None, list[Any] | None]:
    """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` per direction of one layer (torch's flat order)."""
    per = len(params) // dirs
    groups = [params[d * per : (d + 1) * per] for d in range(dirs)]
    w_ih = [g[0] for g in groups]
    w_hh = [g[1] for g in groups]
    b_ih = [g[2] for g in groups] if has_biases else None
    b_hh = [g[3] for g in groups] if has_biases else None
    base = 4 if has_biases else 2
    w_hr = [g[base] for g in groups] if per > base else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def _run_layer(
    mode: str,
    x: Any,
    weights: tuple[list[Any], list[Any], list[Any] | None, list[Any] | None, list[Any] | None],
    h: Any,
    c: Any,
) -> tuple[Any, Any, Any]:
    """One layer, every direction at once. ``x``: ``(T, B, I)`` time-major; ``h``/``c``:
    ``(D, B, H)``. Returns ``(output (T, B, D * H_out), h_T, c_T)``."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    dirs = len(w_ih)
    steps = x.shape[0]
    # input projections of all time steps; the reverse direction reads time backwards
    xw = torch.stack(
        [
            F.linear(x if d == 0 else x.flip(0), w_ih[d], None if b_ih is None else b_ih[d])
            for d in range(dirs)
        ],
        1,
    )  # (T, D, B, G*H)
    w_hh_t = torch.stack([w.t() for w in w_hh]) if dirs == 2 else None  # (D, H_out, G*H)
    bias_h = None if b_hh is None else torch.stack(b_hh).unsqueeze(1)  # (D, 1, G*H)
    w_hr_t = None if w_hr is None else torch.stack([w.t() for w in w_hr])  # (D, H, H_out)
    outs = []
    for t in range(steps):
        # one direction: a product with the weight's own transposed view, so a weight whose
        # Beaver mask is reused (crypten_lite.nn.reuse_weight_masks) is not masked again
        hw = torch.bmm(h, w_hh_t) if w_hh_t is not None else (h[0] @ w_hh[0].t()).unsqueeze(0)
        if bias_h is not None:
            hw = hw + bias_h
        h, c = _step(mode, xw[t], hw, h, c)
        if w_hr_t is not None:
            h = torch.bmm(h, w_hr_t)
        outs.append(h)
    out = torch.stack(outs)  # (T, D, B, H_out)
    pieces = [out[:, 0]] + ([out[:, 1].flip(0)] if dirs == 2 else [])
    return torch.cat(pieces, -1), h, c


def _run_packed_direction(
    mode: str,
    xw: Any,
    sizes: list[int],
    w_hh: Any,
    b_hh: Any,
    w_hr: Any,
    h: Any,
    c: Any,
    reverse: bool,
) -> tuple[Any, Any, Any]:
    """One direction over packed rows: step ``t`` updates the first ``sizes[t]`` sequences
    (sorted by length), the others keep their state. ``xw``: ``(sum(sizes), G*H)``; ``h``,
    ``c``: ``(B, H)``. Returns ``(output rows in packed order, h_T, c_T)``."""
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    outs: dict[int, Any] = {}
    for t in order:
        b = sizes[t]
        hw = F.linear(h[:b], w_hh, b_hh)
        h_new, c_new = _step(
            mode, xw[starts[t] : starts[t] + b], hw, h[:b], None if c is None else c[:b]
        )
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        outs[t] = h_new
        h = torch.cat([h_new, h[b:]], 0) if b < h.shape[0] else h_new
        if c is not None:
            c = torch.cat([c_new, c[b:]], 0) if b < c.shape[0] else c_new
    return torch.cat([outs[t] for t in range(len(sizes))], 0), h, c


def _run_packed(
    mode: str,
    data: Any,
    batch_sizes: Any,
    hx: Any,
    params: Sequence[Any],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
) -> tuple[Any, ...]:
    """``torch.<mode>`` on a ``PackedSequence`` (public ``batch_sizes``): the directions run
    one after the other (their active batches differ), so a bidirectional layer costs twice
    the rounds of the padded form."""
    dirs = 2 if bidirectional else 1
    sizes = [int(b) for b in batch_sizes.tolist()]
    h0, c0 = (hx[0], hx[1]) if mode == "lstm" else (hx, None)
    per_layer = len(params) // num_layers
    layer_input = data
    h_n, c_n = [], []
    for layer in range(num_layers):
        w_ih, w_hh, b_ih, b_hh, w_hr = _layer_weights(
            params[layer * per_layer : (layer + 1) * per_layer], dirs, has_biases
        )
        outs = []
        for d in range(dirs):
            row = layer * dirs + d
            xw = F.linear(layer_input, w_ih[d], None if b_ih is None else b_ih[d])
            out, h_last, c_last = _run_packed_direction(
                mode,
                xw,
                sizes,
                w_hh[d],
                None if b_hh is None else b_hh[d],
                None if w_hr is None else w_hr[d],
                h0[row],
                None if c0 is None else c0[row],
                reverse=d == 1,
            )
            outs.append(out)
            h_n.append(h_last)
            c_n.append(c_last)
        layer_input = torch.cat(outs, -1) if dirs == 2 else outs[0]
        if dropout > 0.0 and train and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    if mode == "lstm":
        return layer_input, torch.stack(h_n), torch.stack(c_n)
    return layer_input, torch.stack(h_n)


def _run(
    mode: str,
    x: Any,
    hx: Any,
    params: Sequence[Any],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[Any, ...]:
    dirs = 2 if bidirectional else 1
    h0, c0 = (hx[0], hx[1]) if mode == "lstm" else (hx, None)
    layer_input = x.transpose(0, 1) if batch_first else x
    per_layer = len(params) // num_layers
    h_n, c_n = [], []
    for layer in range(num_layers):
        weights = _layer_weights(
            params[layer * per_layer : (layer + 1) * per_layer], dirs, has_biases
        )
        rows = slice(layer * dirs, (layer + 1) * dirs)
        c_init = None if c0 is None else c0[rows]
        layer_input, h_last, c_last = _run_layer(mode, layer_input, weights, h0[rows], c_init)
        h_n.append(h_last)
        c_n.append(c_last)
        if dropout > 0.0 and train and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    if mode == "lstm":
        return output, torch.cat(h_n, 0), torch.cat(c_n, 0)
    return output, torch.cat(h_n, 0)


@implements_function(torch.lstm)
def lstm(*args: Any) -> tuple[Any, ...]:
    """``torch.lstm(input, (h0, c0), params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first)`` -> ``(output, h_n, c_n)`` (see the module docstring)."""
    return _run_packed("lstm", *args) if _is_packed(args) else _run("lstm", *args)


@implements_function(torch.gru)
def gru(*args: Any) -> tuple[Any, ...]:
    """``torch.gru(input, h0, params, ...)`` -> ``(output, h_n)``."""
    return _run_packed("gru", *args) if _is_packed(args) else _run("gru", *args)


@implements_function(torch.rnn_tanh)
def rnn_tanh(*args: Any) -> tuple[Any, ...]:
    """``torch.rnn_tanh(input, h0, params, ...)`` -> ``(output, h_n)``."""
    return _run_packed("rnn_tanh", *args) if _is_packed(args) else _run("rnn_tanh", *args)


@implements_function(torch.rnn_relu)
def rnn_relu(*args: Any) -> tuple[Any, ...]:
    """``torch.rnn_relu(input, h0, params, ...)`` -> ``(output, h_n)``."""
    return _run_packed("rnn_relu", *args) if _is_packed(args) else _run("rnn_relu", *args)


# --------------------------------------------------------------------------- cells


def _cell_projections(
    x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any
) -> tuple[Any, Any]:
    return F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh)


@implements_function(torch.lstm_cell)
def lstm_cell(
    x: Any, hx: Sequence[Any], w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None
) -> tuple[Any, Any]:
    """``torch.lstm_cell`` -> ``(h', c')`` (one step of :func:`_lstm_step`)."""
    h, c = hx[0], hx[1]
    xw, hw = _cell_projections(x, h, w_ih, w_hh, b_ih, b_hh)
    return _lstm_step(xw, hw, h, c)


@implements_function(torch.gru_cell)
def gru_cell(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Any:
    """``torch.gru_cell`` -> ``h'``."""
    xw, hw = _cell_projections(x, h, w_ih, w_hh, b_ih, b_hh)
    return _gru_step(xw, hw, h)


@implements_function(torch.rnn_tanh_cell)
def rnn_tanh_cell(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Any:
    """``torch.rnn_tanh_cell`` -> ``h'``."""
    xw, hw = _cell_projections(x, h, w_ih, w_hh, b_ih, b_hh)
    return _rnn_step("rnn_tanh", xw, hw)


@implements_function(torch.rnn_relu_cell)
def rnn_relu_cell(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Any:
    """``torch.rnn_relu_cell`` -> ``h'``."""
    xw, hw = _cell_projections(x, h, w_ih, w_hh, b_ih, b_hh)
    return _rnn_step("rnn_relu", xw, hw)


# --------------------------------------------------------------------------- unsafe_split


def _copies(x: MPCTensor, sizes: int | list[int], dim: int) -> list[MPCTensor]:
    """Pieces of ``x`` in fresh buffers: ``unsafe_split``'s outputs are not views for
    autograd, so they must not share an alias with ``x``."""
    shares = torch.split(x._share, sizes, dim)
    public = x.public_value()
    publics: Sequence[torch.Tensor | None] = (
        torch.split(public, sizes, dim) if public is not None else [None] * len(shares)
    )
    return [
        wrap(s.clone(), x.party, dtype=x.dtype, public=None if p is None else p.clone())
        for s, p in zip(shares, publics, strict=True)
    ]


@implements(aten.unsafe_split.Tensor)
def unsafe_split(x: MPCTensor, split_size: int, dim: int = 0) -> list[MPCTensor]:
    """``unsafe_split`` (the RNN cells' decompositions chunk their gates with it): copies of the
    share's pieces."""
    return _copies(x, split_size, dim)


@implements(aten.unsafe_split_with_sizes.default)
def unsafe_split_with_sizes(
    x: MPCTensor, split_sizes: Sequence[int], dim: int = 0
) -> list[MPCTensor]:
    return _copies(x, list(split_sizes), dim)


# --------------------------------------------------------------------------- packing


@implements_function(torch._pack_padded_sequence)
def pack_padded_sequence(x: Any, lengths: Any, batch_first: bool) -> tuple[Any, torch.Tensor]:
    """``(data, batch_sizes)``: time step ``t``'s rows of the sequences still running, in
    order (public ``lengths``, sorted decreasing). Written with slices and ``cat``, so autograd
    records ops in the table (torch's fused backward writes into a plain tensor in place);
    ``batch_sizes`` stays a plain tensor, as ``PackedSequence`` reads it in Python."""
    lens = [int(v) for v in torch.as_tensor(lengths).tolist()]
    if any(a < b for a, b in zip(lens, lens[1:], strict=False)) or not lens or lens[-1] <= 0:
        raise ValueError(
            "pack_padded_sequence: lengths must be positive and sorted in decreasing order "
            "(or pass enforce_sorted=False)"
        )
    seq = x.transpose(0, 1) if batch_first else x
    sizes = [sum(1 for n in lens if n > t) for t in range(lens[0])]
    data = torch.cat([seq[t, :b] for t, b in enumerate(sizes)], 0)
    return data, torch.tensor(sizes, dtype=torch.int64)


@implements_function(torch._pad_packed_sequence)
def pad_packed_sequence(
    data: Any, batch_sizes: Any, batch_first: bool, padding_value: float, total_length: int
) -> tuple[Any, torch.Tensor]:
    """``(padded (T, B, *), lengths)`` from packed rows: each time step's rows, completed to
    ``B`` with the public ``padding_value`` (torch's own decomposition writes the rows into a
    plain tensor in place, which cannot hold secrets)."""
    sizes = [int(b) for b in batch_sizes.tolist()]
    batch, feature = sizes[0], tuple(data.shape[1:])
    steps, start = [], 0
    for b in sizes:
        rows = data[start : start + b]
        if b < batch:
            rows = torch.cat([rows, torch.full((batch - b, *feature), float(padding_value))], 0)
        steps.append(rows)
        start += b
    fill = torch.full((batch, *feature), float(padding_value))
    steps += [fill] * max(0, total_length - len(sizes))
    padded = torch.stack(steps, 0)
    lengths = (torch.tensor(sizes).unsqueeze(1) > torch.arange(batch)).sum(0)
    return (padded.transpose(0, 1) if batch_first else padded), lengths
