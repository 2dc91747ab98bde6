"""grunet.explain and `grunet explain`: gates, state changes and running probabilities, checked against an
independent numpy recomputation of the equations; the CLI's output, --png, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from grunet.checkpoint import save_checkpoint
from grunet.cli import main
from grunet.data import load_split
from grunet.errors import GrunetError
from grunet.explain import format_trace, gate_trace, sparkline
from grunet.model import ModelConfig, SequenceClassifier
from grunet.train import TrainConfig, run

TINY = dict(units=8, steps=21, eval_every=10, impl="reference", threads=1)


# ----------------------------------------------------------------------------------------------------
# the oracle: the equations in numpy, float64, written out here (no grunet code)
def sigma(a, name):
    if name == "hard_sigmoid_keras2":
        return np.clip(0.2 * a + 0.5, 0.0, 1.0)
    return 1.0 / (1.0 + np.exp(-a))


def np_gru(x, w_ih, w_hh, b_ih, b_hh, reset_after, act="sigmoid"):
    """x (T, I) -> dict of (T, U) arrays r, z, n, h; rows of w_* are r | z | n; b_hh None for reset-before."""
    U = w_hh.shape[1]
    W_ir, W_iz, W_in = w_ih[:U], w_ih[U:2 * U], w_ih[2 * U:]
    W_hr, W_hz, W_hn = w_hh[:U], w_hh[U:2 * U], w_hh[2 * U:]
    b_r, b_z, b_n = b_ih[:U], b_ih[U:2 * U], b_ih[2 * U:]
    h = np.zeros(U)
    out = {k: [] for k in "rznh"}
    for x_t in x:
        if reset_after:
            c_r, c_z, c_n = b_hh[:U], b_hh[U:2 * U], b_hh[2 * U:]
            r = sigma(W_ir @ x_t + b_r + W_hr @ h + c_r, act)
            z = sigma(W_iz @ x_t + b_z + W_hz @ h + c_z, act)
            n = np.tanh(W_in @ x_t + b_n + r * (W_hn @ h + c_n))
        else:
            r = sigma(W_ir @ x_t + W_hr @ h + b_r, act)
            z = sigma(W_iz @ x_t + W_hz @ h + b_z, act)
            n = np.tanh(W_in @ x_t + W_hn @ (r * h) + b_n)
        h = z * h + (1 - z) * n
        for k, v in zip("rznh", (r, z, n, h)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


def np_weights(model, k, suffix, reset_after):
    sd = {name: p.detach().double().numpy() for name, p in model.rnn.named_parameters()}
    if reset_after:
        return (sd[f"weight_ih_l{k}{suffix}"], sd[f"weight_hh_l{k}{suffix}"], sd[f"bias_ih_l{k}{suffix}"],
                sd[f"bias_hh_l{k}{suffix}"])
    return sd[f"weight_ih_l{k}{suffix}"], sd[f"weight_hh_l{k}{suffix}"], sd[f"bias_l{k}{suffix}"], None


def np_model(model, x, cfg):
    """Per layer and direction the traces (time order), and the probabilities softmax(W_d h + b_d) per prefix."""
    D = 2 if cfg.bidirectional else 1
    act = cfg.recurrent_activation
    traces, inputs = [], x
    for k in range(cfg.num_layers):
        fwd = np_gru(inputs, *np_weights(model, k, "", cfg.reset_after), cfg.reset_after, act)
        per = [fwd]
        if D == 2:
            rev = np_gru(inputs[::-1], *np_weights(model, k, "_reverse", cfg.reset_after), cfg.reset_after, act)
            per.append({key: v[::-1] for key, v in rev.items()})
        traces.append(per)
        inputs = np.concatenate([p["h"] for p in per], 1)
    W_d, b_d = model.dense.weight.detach().double().numpy(), model.dense.bias.detach().double().numpy()

    def softmax(a):
        e = np.exp(a - a.max())
        return e / e.sum()

    if D == 1:
        probabilities = np.array([softmax(W_d @ h + b_d) for h in traces[-1][0]["h"]])
    else:  # prefix x[:t+1]: forward state at t; reverse state after reading the prefix backwards from t
        probabilities = []
        for t in range(len(x)):
            inp = x[: t + 1]
            for k in range(cfg.num_layers):
                f = np_gru(inp, *np_weights(model, k, "", cfg.reset_after), cfg.reset_after, act)["h"]
                b = np_gru(inp[::-1], *np_weights(model, k, "_reverse", cfg.reset_after), cfg.reset_after, act)["h"]
                inp = np.concatenate([f, b[::-1]], 1)
            probabilities.append(softmax(W_d @ np.concatenate([f[-1], b[-1]]) + b_d))
        probabilities = np.array(probabilities)
    return traces, probabilities


CASES = [
    dict(reset_after=False),
    dict(reset_after=True),
    dict(reset_after=False, recurrent_activation="hard_sigmoid_keras2"),
    dict(reset_after=True, num_layers=2),
    dict(reset_after=False, num_layers=2, bidirectional=True),
]


# grunet.GRU for every case; torch.nn.GRU (impl="torch") where it exists: reset-after, sigmoid
PAIRS = [(c, "auto") for c in CASES]
PAIRS += [(c, "torch") for c in CASES if c["reset_after"] and "recurrent_activation" not in c]


def case_id(v):
    return v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items())


@pytest.mark.parametrize("case,impl", PAIRS, ids=case_id)
def test_trace_equals_numpy_recomputation(case, impl):
    torch.manual_seed(3)
    cfg = ModelConfig(input_size=5, hidden_size=6, num_classes=4, init="torch", **case)
    model = SequenceClassifier(cfg, impl=impl).eval()
    assert isinstance(model.rnn, torch.nn.GRU) == (impl == "torch")
    x = torch.rand(7, 5)
    traces, probabilities = np_model(model, x.double().numpy(), cfg)
    directions = ["forward", "reverse"] if cfg.bidirectional else ["forward"]
    for k in range(cfg.num_layers):
        for d, direction in enumerate(directions):
            tr = gate_trace(model, x, layer=k, direction=direction)
            ref = traces[k][d]
            assert (tr.layer, tr.direction, tr.reset_after) == (k, direction, cfg.reset_after)
            for key in "rznh":
                np.testing.assert_allclose(getattr(tr, key), ref[key], atol=1e-5, err_msg=key)
            zero = np.zeros((1, 6))
            h_prev = np.vstack([zero, ref["h"][:-1]]) if d == 0 else np.vstack([ref["h"][1:], zero])
            np.testing.assert_allclose(tr.dh, np.sqrt(((ref["h"] - h_prev) ** 2).sum(1)), atol=1e-5)
            np.testing.assert_allclose(tr.new_information, 1 - ref["z"], atol=1e-5)
            np.testing.assert_allclose(tr.probabilities, probabilities, atol=1e-5)
            np.testing.assert_allclose(tr.x, x.double().numpy())
    # the default is the last layer, and the last step's probabilities are the model's prediction
    assert gate_trace(model, x).layer == cfg.num_layers - 1
    np.testing.assert_allclose(gate_trace(model, x).probabilities[-1], model.predict_proba(x[None])[0].double(),
                               atol=1e-6)


def test_lstm_and_bad_arguments_raise():
    lstm = SequenceClassifier(ModelConfig(input_size=5, hidden_size=6, cell="lstm"))
    with pytest.raises(GrunetError, match="expected a GRU.*LSTM"):
        gate_trace(lstm, torch.rand(3, 5))
    gru = SequenceClassifier(ModelConfig(input_size=5, hidden_size=6))
    with pytest.raises(GrunetError, match="--layer"):
        gate_trace(gru, torch.rand(3, 5), layer=1)
    with pytest.raises(GrunetError, match="--direction"):
        gate_trace(gru, torch.rand(3, 5), direction="reverse")
    with pytest.raises(GrunetError, match=r"input: expected one sequence of shape \(T, 5\)"):
        gate_trace(gru, torch.rand(3, 4))


def test_sparkline_and_table():
    assert sparkline(np.array([0.0, 0.5, 1.0])) == " =@"
    assert len(sparkline(np.linspace(0, 1, 100), width=28)) == 28
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(input_size=3, hidden_size=4))
    trace = gate_trace(model, torch.rand(130, 3))
    text = format_trace(trace, [str(i) for i in range(10)], max_rows=60)
    assert "every 3th of 130 steps" in text and text.splitlines()[-2].startswith(" 129")


# ----------------------------------------------------------------------------------------------------
# the command line on tiny real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    out = {}
    for name, reset_after in (("before", False), ("after", True)):
        result = run(TrainConfig(reset_after=reset_after, **TINY), root / name, print_fn=lambda s: None,
                     progress=False)
        assert result.exit_code == 0
        out[name] = root / name
    return out


@pytest.mark.parametrize("variant", ["before", "after"])
def test_cli_prints_convention_table_and_writes_png(runs, variant, tmp_path, capsys):
    png = tmp_path / "gates.png"
    assert main(["explain", str(runs[variant]), "--index", "5", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "z is the share of the old state kept and 1 - z the share of new information let in" in out
    assert "L2 norm" in out and f"reset-{variant}" in out
    table = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [int(line[:4]) for line in table] == list(range(28))  # one line per image row
    assert "prediction:" in out and "true class" in out
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 400
        assert np.asarray(im.convert("L")).std() > 10  # drawn, not blank


def test_cli_image_equals_dataset_digit(runs, tmp_path, capsys):
    images, labels = load_split("mnist-sample", "test")
    path = tmp_path / "digit.png"
    Image.fromarray(images[7]).save(path)
    assert main(["explain", str(runs["after"]), "--index", "7"]) == 0
    by_index = capsys.readouterr().out
    assert main(["explain", str(runs["after"]), "--image", str(path)]) == 0
    by_image = capsys.readouterr().out
    table = lambda text: [line for line in text.splitlines() if line[:4].strip().isdigit()]  # noqa: E731
    assert table(by_index) == table(by_image) and len(table(by_image)) == 28


def test_cli_bad_input_exit_2(runs, tmp_path, capsys):
    lstm_ckpt = tmp_path / "lstm.pt"
    save_checkpoint(lstm_ckpt, SequenceClassifier(ModelConfig(hidden_size=8, cell="lstm")))
    mismatched = tmp_path / "mismatch.pt"
    save_checkpoint(mismatched, SequenceClassifier(ModelConfig(hidden_size=8)))
    state = torch.load(mismatched, weights_only=False)
    state["model"] = SequenceClassifier(ModelConfig(hidden_size=16)).state_dict()
    torch.save(state, mismatched)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        (["explain", str(lstm_ckpt), "--index", "0"], "expected a GRU"),
        (["explain", str(mismatched), "--index", "0"], "weights do not match"),
        (["explain", str(runs["before"]), "--image", str(broken)], "cannot be read"),
        (["explain", str(runs["before"]), "--image", str(tmp_path / "missing.png")], "no such file"),
        (["explain", str(runs["before"]), "--index", "1000"], "--index"),
        (["explain", str(runs["before"]), "--index", "0", "--layer", "1"], "--layer"),
        (["explain", str(runs["before"]), "--index", "0", "--direction", "reverse"], "--direction"),
        (["explain", str(runs["before"]), "--index", "0", "--png", str(tmp_path / "x.jpg")], "--png"),
        (["explain", str(tmp_path / "nothing"), "--index", "0"], "nothing at that path"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)


# ----------------------------------------------------------------------------------------------------
# converted models (StackModel): any GRU classifier that predict accepts
from grunet.convert.stack import DenseSpec, GRUSpec, StackModel, as_stack  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_stack_model_traces_equal_the_sequence_classifier_they_came_from(case):
    """as_stack copies the weights exactly: every layer and direction traces the same gates and probabilities."""
    torch.manual_seed(5)
    cfg = ModelConfig(input_size=5, hidden_size=6, num_classes=4, init="torch", **case)
    model = SequenceClassifier(cfg, impl="reference").eval()
    stack = as_stack(model).eval()
    x = torch.rand(7, 5)
    directions = ["forward", "reverse"] if cfg.bidirectional else ["forward"]
    for k in range(cfg.num_layers):
        for direction in directions:
            a, b = gate_trace(model, x, layer=k, direction=direction), gate_trace(stack, x, layer=k, direction=direction)
            assert (b.layer, b.num_layers, b.direction, b.reset_after) == (k, cfg.num_layers, direction, cfg.reset_after)
            for key in ("r", "z", "n", "h", "dh", "probabilities"):
                np.testing.assert_allclose(getattr(b, key), getattr(a, key), atol=1e-6, err_msg=key)


def test_keras_tutorial_stack_gru_dense_softmax():
    """The tutorial's Keras model, GRU(reset-before) -> Dense(10, softmax), as converted: the numpy oracle."""
    torch.manual_seed(6)
    stack = StackModel((28, 28), [GRUSpec("gru", 6, reset_after=False), DenseSpec("dense", 10, "softmax")],
                       impl="reference").eval()
    x = torch.rand(28, 28)
    gru, dense = stack.layers
    sd = {n: p.detach().double().numpy() for n, p in gru.named_parameters()}
    ref = np_gru(x.double().numpy(), sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_l0"], None, False)
    tr = gate_trace(stack, x)
    for key in "rznh":
        np.testing.assert_allclose(getattr(tr, key), ref[key], atol=1e-5, err_msg=key)
    W, b = dense.weight.detach().double().numpy(), dense.bias.detach().double().numpy()
    logits = ref["h"] @ W.T + b
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(tr.probabilities, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_stacked_bidirectional_stack_picks_layer_and_direction():
    """GRU(bi, sequences) -> Dense(relu, per step) -> GRU -> Dense(softmax): layer 1 reads what Dense made."""
    torch.manual_seed(7)
    specs = [GRUSpec("g0", 4, return_sequences=True, bidirectional=True), DenseSpec("mid", 5, "relu"),
             GRUSpec("g1", 3), DenseSpec("out", 10, "softmax")]
    stack = StackModel((None, 6), specs, impl="reference").eval()
    x = torch.rand(9, 6)
    g0, mid, g1, _ = stack.layers
    sd0 = {n: p.detach().double().numpy() for n, p in g0.named_parameters()}
    xn = x.double().numpy()
    fwd = np_gru(xn, *(sd0[f"{w}_l0"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")), True)
    rev = np_gru(xn[::-1], *(sd0[f"{w}_l0_reverse"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")), True)
    rev = {key: v[::-1] for key, v in rev.items()}
    tr = gate_trace(stack, x, layer=0, direction="reverse")
    np.testing.assert_allclose(tr.z, rev["z"], atol=1e-5)
    mid_out = np.maximum(np.concatenate([fwd["h"], rev["h"]], 1) @ mid.weight.detach().double().numpy().T
                         + mid.bias.detach().double().numpy(), 0)
    sd1 = {n: p.detach().double().numpy() for n, p in g1.named_parameters()}
    top = np_gru(mid_out, *(sd1[f"{w}_l0"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")), True)
    tr1 = gate_trace(stack, x)  # default: the last GRU layer
    assert (tr1.layer, tr1.num_layers) == (1, 2)
    np.testing.assert_allclose(tr1.h, top["h"], atol=1e-5)
    with torch.no_grad():
        prefix = torch.cat([stack.predict_proba(x[None, : t + 1]) for t in range(len(x))]).double().numpy()
    np.testing.assert_allclose(tr1.probabilities, prefix, atol=1e-6)
    with pytest.raises(GrunetError, match=r"--direction: expected 'forward' for a unidirectional GRU layer \(layer 1\)"):
        gate_trace(stack, x, layer=1, direction="reverse")
    with pytest.raises(GrunetError, match=r"--layer: expected a GRU layer index in \[0, 1\]"):
        gate_trace(stack, x, layer=2)


def test_cli_explains_a_converted_keras_model(tmp_path, capsys):
    torch.manual_seed(8)
    stack = StackModel((None, 28), [GRUSpec("gru", 6, reset_after=False), DenseSpec("dense", 10, "softmax")])
    path = tmp_path / "keras.pt"
    save_checkpoint(path, stack)
    png = tmp_path / "gates.png"
    assert main(["explain", str(path), "--index", "3", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(table) == 28 and "prediction:" in out and png.stat().st_size > 1000
    images, _ = load_split("mnist-sample", "test")
    with torch.no_grad():
        p = stack.predict_proba(torch.from_numpy(images[3:4] / 255.0).float())[0]
    assert f"prediction: {int(p.argmax())} p={float(p.max()):.4f}" in out


def test_cli_png_checked_before_any_work(runs, tmp_path, capsys, monkeypatch):
    (tmp_path / "dir.png").mkdir()
    cases = [
        (str(tmp_path / "missing" / "g.png"), "existing directory"),
        (str(tmp_path / "dir.png"), "which is a directory"),
    ]
    for png, message in cases:
        assert main(["explain", str(runs["after"]), "--index", "0", "--png", png]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1
    # without matplotlib: the extra is named, and nothing is printed first
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.") or m == "grunet.plots"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["explain", str(runs["after"]), "--index", "0", "--png", str(tmp_path / "g.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "grunet[report]" in captured.err and len(captured.err.strip().splitlines()) == 1
