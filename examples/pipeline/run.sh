#!/usr/bin/env bash
# The three steps, one MLflow run: preprocess opens it, train (2 processes) and predict log into it, predict ends it.
cd "$(dirname "$0")" && MLFLOW_RUN_ID=$(python preprocess.py) && export MLFLOW_RUN_ID && python train.py && python predict.py
