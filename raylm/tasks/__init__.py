"""Tasks: one class per task family, owning its vertical (input readers and features, model head,
collate, loss, metrics, per-file evaluate/predict). `raylm.tasks.registry` names them; nothing outside
this package branches on a task's name. Imports nothing here, so the config validator stays light."""
