import pytest
import torch
from torch import nn

from dropkit.lab.tasks import Task, TaskData, get_task
from dropkit.lab.tasks.language import AwdLstm, CharLstm
from dropkit.lab.train import (
    RunConfig,
    evaluate,
    initial_model,
    select_epoch,
    train_run,
)

CONFIG = RunConfig(task="breast-cancer", variant="standard", p=0.5, seed=3, epochs=4,
                   batch_size=64, lr=1e-3, weight_decay=0.0)
_TIMES = {"epoch_time", "epoch_cpu_time"}  # the only entries that may differ between two runs


def _train(checkpoint=None, stop_after=None, config=CONFIG):
    task = get_task("breast-cancer")
    rows, checkpoints = [], {}

    def on_epoch(epoch, metrics, blob):
        rows.append((epoch, {k: v for k, v in metrics.items() if k not in _TIMES}))
        checkpoints[epoch] = blob
        if epoch == stop_after:
            raise KeyboardInterrupt  # simulate a kill right after the epoch was recorded

    try:
        model = train_run(task, task.load(None), config, checkpoint=checkpoint, on_epoch=on_epoch)
    except KeyboardInterrupt:
        model = None
    return model, rows, checkpoints


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one():
    full_model, full_rows, _ = _train()
    _, first_rows, checkpoints = _train(stop_after=2)
    resumed_model, resumed_rows, _ = _train(checkpoint=checkpoints[2])
    assert [e for e, _ in resumed_rows] == [3, 4]
    assert first_rows + resumed_rows == full_rows
    for name, tensor in full_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


def test_epoch_metrics_cover_the_gap_validation_and_time():
    task = get_task("breast-cancer")
    data = task.load(None)
    rows = []
    train_run(task, data, CONFIG, on_epoch=lambda e, m, b: rows.append(m))
    metrics = rows[-1]
    assert set(metrics) == {"fit_loss", "train_loss", "test_loss", "train_accuracy",
                            "test_accuracy", "test_examples", "val_loss", "val_accuracy",
                            "val_examples", "epoch_time", "epoch_cpu_time"}
    assert 0.5 < metrics["test_accuracy"] <= 1.0  # 63% is the majority-class rate
    assert metrics["test_examples"] == 228 and metrics["val_examples"] == 69
    assert metrics["epoch_cpu_time"] > 0


def test_validation_is_held_out_of_the_training_rows_and_its_size_is_stated():
    # breast-cancer: 569 patients, 40% test (228) -> 341 training rows, 20% of them (69,
    # sklearn rounds the held-out part up) validate.
    data = get_task("breast-cancer").load(None)
    assert len(data.y_test) == 228 and len(data.y_val) == 69 and len(data.y_train) == 272
    rows = {tuple(r.tolist()) for r in data.x_train}
    assert not rows & {tuple(r.tolist()) for r in data.x_val}
    assert any("validation: 69 of the 341 training examples" in note for note in data.notes)
    # Fixed split: loading twice (another run, another seed) gives the same rows.
    again = get_task("breast-cancer").load(None, seed=7)
    assert torch.equal(again.x_val, data.x_val)


def test_select_epoch_takes_the_best_validation_epoch_and_breaks_ties_by_loss():
    task = get_task("breast-cancer")
    rows = [
        {"epoch": 1, "val_accuracy": 0.90, "val_loss": 0.30, "test_accuracy": 0.80},
        {"epoch": 2, "val_accuracy": 0.95, "val_loss": 0.25, "test_accuracy": 0.85},
        {"epoch": 3, "val_accuracy": 0.95, "val_loss": 0.20, "test_accuracy": 0.99},
        {"epoch": 4, "val_accuracy": 0.93, "val_loss": 0.10, "test_accuracy": 0.70},
        {"epoch": 5, "val_accuracy": float("nan"), "val_loss": float("nan")},
    ]
    assert select_epoch(task, rows) == (rows[2], True)
    rmse = get_task("diabetes")  # lower is better
    regression = [{"val_rmse": 60.0, "val_loss": 1.0}, {"val_rmse": 55.0, "val_loss": 0.9}]
    assert select_epoch(rmse, regression)[0] is regression[1]
    old = [{"test_accuracy": 0.5}, {"test_accuracy": 0.6}]  # recorded without validation
    assert select_epoch(task, old) == (old[-1], False)


def test_train_run_returns_the_weights_of_the_selected_epoch():
    task = get_task("breast-cancer")
    data = task.load(None)
    config = RunConfig(task="breast-cancer", variant="standard", p=0.5, seed=0, epochs=12,
                       batch_size=64, lr=3e-2, weight_decay=0.0)
    rows = []
    model = train_run(task, data, config, on_epoch=lambda e, m, b: rows.append({"epoch": e, **m}))
    chosen, by_validation = select_epoch(task, rows)
    assert by_validation
    val_loss, val_accuracy = evaluate(model, task, data.x_val, data.y_val)
    assert val_loss == pytest.approx(chosen["val_loss"], abs=1e-6)
    assert val_accuracy == chosen["val_accuracy"]
    if chosen is not rows[-1]:  # then the returned model is not the last epoch's
        assert val_loss != pytest.approx(rows[-1]["val_loss"], abs=1e-6)


@pytest.mark.parametrize("task_name", ["mnist1d", "digits", "breast-cancer", "fsdd", "mnist-cnn"])
@pytest.mark.parametrize("variant", ["standard", "dropblock"])
def test_runs_of_one_seed_start_from_the_same_weights_at_every_rate(task_name, variant):
    task = get_task(task_name)
    weights = [
        initial_model(task, RunConfig(task=task_name, variant=variant, p=p, seed=5, epochs=1,
                                      batch_size=8, lr=1e-3, weight_decay=0.0)).state_dict()
        for p in (0.0, 0.2, 0.5)
    ]
    for name, tensor in weights[0].items():
        assert all(torch.equal(tensor, other[name]) for other in weights[1:]), name
    other_seed = initial_model(task, RunConfig(task=task_name, variant=variant, p=0.0, seed=6,
                                               epochs=1, batch_size=8, lr=1e-3,
                                               weight_decay=0.0)).state_dict()
    assert any(not torch.equal(t, other_seed[n]) for n, t in weights[0].items())


@pytest.mark.parametrize("model", [AwdLstm, CharLstm])
def test_recurrent_models_of_one_seed_share_weights_at_every_rate(model):
    # WeightDrop and EmbeddingDropout wrap the same modules whatever p is.
    built = []
    for p in (0.0, 0.5):
        torch.manual_seed(1)
        built.append(model(50, p, "standard").state_dict())
    assert all(torch.equal(t, built[1][n]) for n, t in built[0].items())


class _Recorder(Task):
    """A task whose model remembers which examples it was fed, in order."""

    name = "recorder"
    description = "records batches"

    def build_model(self, p, variant="standard"):
        task = self

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.head = nn.Linear(1, 2)
                self.drop = nn.Dropout(p)

            def forward(self, x):
                if self.training:
                    task.seen.append(x[:, 0].tolist())
                return self.head(self.drop(x))

        return Model()


def test_runs_of_one_seed_see_the_data_in_the_same_order_at_every_rate():
    task = _Recorder()
    x = torch.arange(40, dtype=torch.float32).unsqueeze(1)
    y = (x[:, 0] % 2).long()
    data = TaskData(x, y, x[:8], y[:8], x_val=x[:8], y_val=y[:8])
    orders = []
    for p in (0.0, 0.5):
        task.seen = []
        train_run(task, data, RunConfig(task="recorder", variant="standard", p=p, seed=2,
                                        epochs=3, batch_size=7, lr=1e-2, weight_decay=0.0))
        orders.append(task.seen)
    assert orders[0] == orders[1] and len(orders[0]) == 18  # 3 epochs x ceil(40 / 7) batches
    assert orders[0][0] != sorted(orders[0][0])  # and the order is shuffled


def test_a_per_seed_task_refuses_data_loaded_for_another_seed():
    task = _Recorder()
    task.data_per_seed = True
    x = torch.zeros(4, 1)
    data = TaskData(x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long),
                    seed=0)
    config = RunConfig(task="recorder", variant="standard", p=0.0, seed=1, epochs=1,
                       batch_size=2, lr=1e-2, weight_decay=0.0)
    with pytest.raises(RuntimeError, match=r"seed=1 needs task.load\(data_dir, seed=1\)"):
        train_run(task, data, config)
