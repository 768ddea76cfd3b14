"""The Lightning callbacks, one per file. The CLI puts each always-on one on every run with its
own switch (`--<name>.enabled false`, see `python cli.py fit --help`); any of them can also be
given with `--trainer.callbacks`.

    checkpoint.py               checkpoints, `last.ckpt` every epoch and on a stop signal
    run_record.py               the record of the latest fit (latest_fit.json): its one owner
    graceful_interrupt.py       SIGTERM / SIGUSR1 / Ctrl+C stop at a batch boundary with a checkpoint
    resumable_rng.py            random streams saved in checkpoints and continued on resume
    nonfinite_loss.py           stop at the first NaN or Inf loss
    process_watchdog.py         a multi-process job ends when one process dies
    ema.py                      exponential moving average of the weights
    distillation.py             --distill: a frozen teacher's term in the loss, recorded in checkpoints
    lr_finder.py                Lightning's learning-rate finder at the start of fit
    progressive.py              progressive learning: image size and regularisation by stage
    learning_rate_log.py        learning rates per parameter group
    fit_summary.py              the line a fit prints at its end
    evaluation_report.py        per-class table and confusion matrix of validate / test
    prediction_writer.py        predictions as CSV and JSON
    wandb_validation_report.py  sample predictions and confusion matrix in W&B
    wandb_run.py                the W&B run id in checkpoints
    run_config.py               each run's configuration next to its checkpoints
    atomic.py                   writing files whole or not at all (the checkpoint plugin)
"""
