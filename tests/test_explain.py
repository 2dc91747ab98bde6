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
