"""bench/spy.py: py-spy's raw (collapsed) stacks put in the steps they belong to, on stacks written by hand as
py-spy writes them for the service, LitServe and TorchServe."""

from __future__ import annotations

import pytest

from bench import spy

SERVICE_RUN = ('process 10:"alexnet-serve";_bootstrap (threading.py:1002);worker (anyio/_backends/_asyncio.py:967);'
               "_predict (service/batching.py:240);run (service/session.py:301);"
               "run (onnxruntime/capi/onnxruntime_inference_collection.py:273)")
SERVICE_DECODE = ('process 10:"alexnet-serve";worker (anyio/_backends/_asyncio.py:967);'
                  "decode (service/preprocess.py:120);draft (PIL/JpegImagePlugin.py:470)")
LITSERVE_CROPS = ('process 20:"python -m bench.peer_litserve";process 21:"litserve worker";'
                  "run_batched_loop (litserve/loops/simple_loops.py:300);"
                  "decode_request (bench/peer_litserve.py:95);ten_crops (bench/peer_litserve.py:60);"
                  "asarray (numpy/_core/...:1)")
LITSERVE_NUMPY_ONLY = ('process 21:"litserve worker";predict (bench/peer_litserve.py:101);'
                       "mean (numpy/_core/fromnumeric.py:3596)")
TORCHSERVE_RESIZE = ('process 30:"ts worker";preprocess (bench/peer_torchserve_handler.py:70);'
                     "__call__ (torchvision/transforms/transforms.py:95);resize (torch/nn/functional.py:4000)")
TORCHSERVE_FORWARD = ('process 30:"ts worker";inference (bench/peer_torchserve_handler.py:90);'
                      "_call_impl (torch/nn/modules/module.py:1750)")
UVICORN = 'process 10:"alexnet-serve";run (uvicorn/server.py:70);feed_data (h11/_connection.py:500)'


def test_each_stack_goes_to_its_step():
    assert spy.bucket(SERVICE_RUN.split(";")) == "inference"
    assert spy.bucket(SERVICE_DECODE.split(";")) == "decode + crops"
    assert spy.bucket(LITSERVE_CROPS.split(";")) == "decode + crops"
    assert spy.bucket(LITSERVE_NUMPY_ONLY.split(";")) == "everything else"  # averaging the crops is not cropping
    assert spy.bucket(TORCHSERVE_RESIZE.split(";")) == "decode + crops"  # torch below torchvision's transforms
    assert spy.bucket(TORCHSERVE_FORWARD.split(";")) == "inference"
    assert spy.bucket(UVICORN.split(";")) == "everything else"


def test_summarise_counts_samples_and_per_image_cost():
    raw = "\n".join([f"{SERVICE_RUN} 700", f"{SERVICE_DECODE} 150", f"{UVICORN} 50", f"{SERVICE_RUN} 100", "",
                     "garbage-without-a-count"])
    counts = spy.summarise(raw)
    assert counts == {"inference": 800, "decode + crops": 150, "everything else": 50}
    # 100 samples/s: 8 s in runs, 1.5 s decoding, 0.5 s else, over 100 images → 80, 15, 5 ms per image
    assert spy.per_image_ms(counts, rate=100, images=100) == {"inference": 80.0, "decode + crops": 15.0,
                                                               "everything else": 5.0}


def test_a_bad_server_name_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        spy.main(["--servers", "service,triton"])
    assert exc.value.code == 2
    assert "unknown triton" in capsys.readouterr().err
