"""`alexnet-eval`'s library: the validation data (data.py), where predictions come from (backends.py: the
service's own pipeline in this process, or a running service over HTTP) and the metrics and reports
(report.py). The command itself is service/evaluation/cli.py, a thin script over these."""
