"""Checks voxserve's KServe v2 service with Triton's own Python client.

    python scripts/tritonclient_check.py HOST:PORT

Run by server/kserve_test.go against a server over the test repository's
`affine` model (y = 2x + 1 over [batch, 2, 3]). First it compiles voxserve's
proto/inference/grpc_service.proto and checks that every message field has
the name, number and type tritonclient's own descriptors give it; then it
talks to the server. Exits non-zero on the first failure.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as triton_config_pb2
from tritonclient.grpc import service_pb2 as triton
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(cond, what):
    if not cond:
        sys.exit("tritonclient check failed: " + what)


def same_wire_format():
    """Our proto, compiled to a descriptor set (not imported: its package
    would clash with tritonclient's in the descriptor pool), field by field
    against tritonclient's descriptors."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "set.pb")
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"), "--include_imports",
                        "--descriptor_set_out=" + out, "inference/grpc_service.proto"], check=True)
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    from tritonclient.grpc import model_config_pb2 as triton_config
    theirs = dict(triton_config.DESCRIPTOR.message_types_by_name)
    theirs.update(triton.DESCRIPTOR.message_types_by_name)
    n = 0

    def compare(mine, theirs, path):
        nonlocal n
        for f in mine.field:
            t = theirs.fields_by_name.get(f.name)
            check(t is not None, f"{path}.{f.name}: not in tritonclient's descriptor")
            rep = getattr(t, "is_repeated", None)  # a property in protobuf 6; label is deprecated there
            if rep is None:
                rep = t.label == t.LABEL_REPEATED
            elif callable(rep):
                rep = rep()
            check((f.number, f.type, f.label == f.LABEL_REPEATED) == (t.number, t.type, rep),
                  f"{path}.{f.name}: ours is number {f.number} type {f.type}, tritonclient's {t.number} {t.type}")
            n += 1
        for nested in mine.nested_type:
            compare(nested, theirs.nested_types_by_name[nested.name], path + "." + nested.name)

    for f in fds.file:
        for msg in f.message_type:
            compare(msg, theirs[msg.name], msg.name)
        for enum in f.enum_type:
            mine = {v.name: v.number for v in enum.value}
            check(mine == {v.name: v.number for v in triton_config.DESCRIPTOR.enum_types_by_name[enum.name].values}, f"enum {enum.name}")
    svc = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    service = next(f for f in fds.file if f.service).service[0]
    for m in service.method:
        check(m.name in svc.methods_by_name, f"method {m.name} is not Triton's")
    print(f"wire format: {n} fields match tritonclient's")


def main():
    same_wire_format()
    c = grpcclient.InferenceServerClient(url=sys.argv[1])
    check(c.is_server_live(), "server live")
    check(c.is_server_ready(), "server ready")
    check(c.is_model_ready("affine"), "model ready")
    check(not c.is_model_ready("nope"), "unknown model not ready")
    check(c.get_server_metadata().name == "voxserve", "server metadata")
    cfg = c.get_model_config("affine").config
    check(cfg.max_batch_size == 4 and cfg.input[0].data_type == triton_config_pb2.TYPE_FP32 and list(cfg.input[0].dims) == [2, 3],
          f"model config {cfg}")
    w = cfg.model_warmup[0] if cfg.model_warmup else None
    check(w is not None and w.batch_size == 4 and w.inputs["x"].random_data and list(w.inputs["x"].dims) == [2, 3],
          f"model warm-up {cfg.model_warmup}")
    md = c.get_model_metadata("affine")
    check(md.inputs[0].datatype == "FP32" and list(md.inputs[0].shape) == [-1, 2, 3], f"model metadata {md}")

    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = c.infer("affine", [inp], outputs=[grpcclient.InferRequestedOutput("y")], request_id="t1", priority=1, timeout=10_000_000)
    y = res.as_numpy("y")
    check(y is not None and np.array_equal(y, 2 * x + 1), f"infer: got {y}")
    check(res.get_response().id == "t1", "request id")

    stats = c.get_inference_statistics("affine").model_stats[0]
    check(stats.inference_count == 2 and stats.execution_count == 1, f"statistics: {stats}")
    check(stats.inference_stats.success.count == 1 and stats.inference_stats.compute_infer.ns > 0, f"statistics: {stats}")

    try:
        c.infer("nope", [inp])
        check(False, "infer on an unknown model succeeded")
    except InferenceServerException as e:
        check("NOT_FOUND" in str(e.status()), f"unknown model: {e.status()} {e.message()}")
    bad = grpcclient.InferInput("x", [1, 3, 2], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 2), dtype=np.float32))
    try:
        c.infer("affine", [bad])
        check(False, "infer with a wrong shape succeeded")
    except InferenceServerException as e:
        check("INVALID_ARGUMENT" in str(e.status()), f"wrong shape: {e.status()} {e.message()}")

    # Streaming: several requests on one stream, answers by callback.
    import queue
    got = queue.Queue()
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    for i in range(4):
        xi = np.full((1, 2, 3), i, dtype=np.float32)
        si = grpcclient.InferInput("x", [1, 2, 3], "FP32")
        si.set_data_from_numpy(xi)
        c.async_stream_infer("affine", [si], request_id=str(i))
    answers = {}
    for _ in range(4):
        result, error = got.get(timeout=10)
        check(error is None, f"stream error: {error}")
        answers[result.get_response().id] = result.as_numpy("y")
    c.stop_stream()
    for i in range(4):
        check(np.array_equal(answers[str(i)], np.full((1, 2, 3), 2 * i + 1, dtype=np.float32)), f"stream answer {i}: {answers.get(str(i))}")

    # System shared memory, as Triton's own examples use it: the input and
    # the output in one region the client made, nothing in the message.
    import tritonclient.utils.shared_memory as shm
    check("system_shared_memory" in c.get_server_metadata().extensions, "system_shared_memory extension listed")
    key = f"/voxserve-tc-{os.getpid()}"
    handle = shm.create_shared_memory_region("affine_io", key, 96)
    try:
        xs = np.arange(6, dtype=np.float32).reshape(1, 2, 3) - 2
        shm.set_shared_memory_region(handle, [xs])
        c.register_system_shared_memory("affine_io", key, 96)
        status = c.get_system_shared_memory_status()
        check([r.name for r in status.regions.values()] == ["affine_io"], f"shared memory status: {status}")
        si = grpcclient.InferInput("x", [1, 2, 3], "FP32")
        si.set_shared_memory("affine_io", 24)
        so = grpcclient.InferRequestedOutput("y")
        so.set_shared_memory("affine_io", 24, offset=48)
        r = c.infer("affine", [si], outputs=[so])
        out = r.get_output("y")
        check(out is not None and list(out.shape) == [1, 2, 3], f"shared memory output: {out}")
        ys = shm.get_contents_as_numpy(handle, np.float32, [1, 2, 3], offset=48)
        check(np.array_equal(ys, 2 * xs + 1), f"shared memory answer: {ys}")
        c.unregister_system_shared_memory("affine_io")
        check(len(c.get_system_shared_memory_status().regions) == 0, "unregistered")
    finally:
        shm.destroy_shared_memory_region(handle)

    c.unload_model("affine")
    check(not c.is_model_ready("affine"), "unloaded model not ready")
    index = {m.name: m.state for m in c.get_model_repository_index().models}
    check(index.get("affine") == "UNAVAILABLE", f"index after unload: {index}")
    c.load_model("affine")
    check(c.is_model_ready("affine"), "reloaded model ready")
    print("tritonclient: all checks passed")


if __name__ == "__main__":
    main()
