"""Parameter counts: the tutorial's numbers, the general formula, and summary totals."""
import itertools

import pytest
import torch

import grunet
from grunet.cli import main
from grunet.model import ModelConfig, SequenceClassifier
from grunet.params import count_params, summary, summary_rows


@pytest.mark.parametrize("reset_after,gru,total", [(False, 23_400, 24_160), (True, 23_625, 24_385)])
def test_tutorial_model_counts(reset_after, gru, total):
    c = count_params(28, 75, reset_after=reset_after, dense=10)
    assert c.gru_total == gru and c.dense_total == 760 and c.total == total
    per_gate = c.layers[0]
    assert (per_gate.input_weights, per_gate.recurrent_weights, per_gate.biases) == (2100, 5625, 150 if reset_after else 75)
    assert f"= {gru:,}" in per_gate.formula()


@pytest.mark.parametrize("I,H,L,bi,ra", itertools.product([1, 28], [3, 75], [1, 3], [False, True], [False, True]))
def test_counts_equal_real_modules(I, H, L, bi, ra):
    model = grunet.GRU(I, H, num_layers=L, bidirectional=bi, reset_after=ra)
    assert count_params(I, H, reset_after=ra, num_layers=L, bidirectional=bi).total == \
        sum(p.numel() for p in model.parameters())
    if ra:
        assert count_params(I, H, num_layers=L, bidirectional=bi).total == \
            sum(p.numel() for p in torch.nn.GRU(I, H, num_layers=L, bidirectional=bi).parameters())


@pytest.mark.parametrize("reset_after,total", [(False, 24_160), (True, 24_385)])
def test_summary_of_tutorial_model(reset_after, total):
    model = SequenceClassifier(ModelConfig(reset_after=reset_after))
    text = summary(model, (1, 28, 28), print_fn=None)
    assert f"Total params: {total:,}" in text
    assert "(1, 10)" in text and "760" in text
    rows = summary_rows(model, (1, 28, 28))
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters()) == total


def test_summary_of_mixed_torch_model_counts_everything():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.BatchNorm1d(3)))
    rows = summary_rows(model, (2, 4))
    assert [r.type for r in rows] == ["Linear", "ReLU", "Linear", "BatchNorm1d"]
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters()) == 40 + 27 + 6
    assert rows[2].output_shape == "(2, 3)"


def test_params_command(capsys):
    assert main(["params", "--input", "28", "--units", "75", "--reset-before", "--dense", "10"]) == 0
    out = capsys.readouterr().out
    assert "3 * (U*I + U*U + U) = 3 * (75*28 + 75*75 + 75)" in out and "Total: 23,400 + 760 = 24,160" in out
    assert main(["params", "--dense", "10", "--layers", "2", "--bidirectional"]) == 0
    out = capsys.readouterr().out
    expected = count_params(28, 75, reset_after=False, num_layers=2, bidirectional=True, dense=10).total
    assert f"= {expected:,}" in out and "layer 1 reverse" in out and "75*150" in out


@pytest.mark.parametrize("argv,message", [
    (["params", "--units", "0"], "hidden_size: expected an integer >= 1, got 0"),
    (["params", "--layers", "-1"], "num_layers: expected an integer >= 1, got -1"),
    (["params", "--dense", "0"], "dense: expected None or an integer >= 1, got 0"),
])
def test_params_command_bad_input(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_params_default_is_the_model_grunet_train_builds(capsys):
    """grunet params without a variant counts the model grunet train builds: reset-before, the tutorial's."""
    from grunet.train import TrainConfig

    assert TrainConfig().reset_after is False
    assert main(["params", "--dense", "10"]) == 0
    out = capsys.readouterr().out
    assert "Total: 23,400 + 760 = 24,160" in out  # the summary grunet train prints
    assert main(["params", "--reset-after", "--dense", "10"]) == 0
    assert "Total: 23,625 + 760 = 24,385" in capsys.readouterr().out


@pytest.mark.parametrize("I,H,L,bi", itertools.product([1, 28], [3, 75], [1, 2], [False, True]))
def test_layer_norm_counts_equal_real_modules(I, H, L, bi):
    model = grunet.GRU(I, H, num_layers=L, bidirectional=bi, layer_norm=True)
    c = count_params(I, H, num_layers=L, bidirectional=bi, layer_norm=True)
    assert c.total == sum(p.numel() for p in model.parameters())
    assert c.total - count_params(I, H, num_layers=L, bidirectional=bi).total == L * (2 if bi else 1) * 2 * 3 * H
    assert all(layer.gains == 2 * H for layer in c.layers)


def test_layer_norm_table_shows_the_gains_gate_by_gate():
    table = count_params(28, 75, layer_norm=True, dense=10).table()
    assert "LN gains" in table.splitlines()[0]
    assert "update z          2,100        5,625     150       150     8,025" in table
    assert ("3 * (U*I + U*U + 2U + 2U) = 3 * (75*28 + 75*75 + 2*75 + 2*75) = 3 * (2,100 + 5,625 + 150 + 150) "
            "= 24,075") in table
    assert "Total: 24,075 + 760 = 24,835" in table
    assert "LN gains" not in count_params(28, 75).table()


def test_layer_norm_count_refuses_reset_before():
    with pytest.raises(grunet.GrunetError, match="layer_norm: expected reset_after=True"):
        count_params(28, 75, reset_after=False, layer_norm=True)


def test_summary_counts_gains_and_names_the_cell_options():
    model = SequenceClassifier(ModelConfig(reset_after=True, layer_norm=True, zoneout=0.1, input_dropout=0.25))
    text = summary(model, (1, 28, 28), print_fn=None)
    assert "Total params: 24,835" in text and "24,075" in text
    assert text.splitlines()[-1] == "rnn cell options: layer_norm, input_dropout=0.25, zoneout=0.1"
    assert "cell options" not in summary(SequenceClassifier(ModelConfig()), (1, 28, 28), print_fn=None)


def test_params_command_with_the_cell_options(capsys):
    assert main(["params", "--reset-after", "--layer-norm", "--dense", "10", "--zoneout", "0.1",
                 "--recurrent-dropout", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "Total: 24,075 + 760 = 24,835" in out
    assert "recurrent_dropout, zoneout: no parameters" in out
    for argv, message in [(["--layer-norm"], "--layer-norm: expected --reset-after"),
                          (["--zoneout", "1.5"], "--zoneout: expected a number in [0, 1), got 1.5")]:
        assert main(["params", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
