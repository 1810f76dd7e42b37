import torch

from dropkit.lab.tasks import get_task
from dropkit.lab.train import RunConfig, train_run

CONFIG = RunConfig(task="breast-cancer", variant="standard", p=0.5, seed=3, epochs=4,
                   batch_size=64, lr=1e-3, weight_decay=0.0)


def _train(checkpoint=None, stop_after=None):
    task = get_task("breast-cancer")
    rows, checkpoints = [], {}

    def on_epoch(epoch, metrics, blob):
        rows.append((epoch, {k: v for k, v in metrics.items() if k != "epoch_time"}))
        checkpoints[epoch] = blob
        if epoch == stop_after:
            raise KeyboardInterrupt  # simulate a kill right after the epoch was recorded

    try:
        model = train_run(task, task.load(None), CONFIG, checkpoint=checkpoint, on_epoch=on_epoch)
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


def test_epoch_metrics_cover_the_gap_and_time():
    _, rows, _ = _train()
    epoch, metrics = rows[-1]
    assert epoch == 4
    assert set(metrics) == {"fit_loss", "train_loss", "test_loss", "train_accuracy",
                            "test_accuracy"}
    assert 0.5 < metrics["test_accuracy"] <= 1.0  # 63% is the majority-class rate
