"""Host cost of one CUDA graph launch (torch.cuda.CUDAGraph.replay) for graphs of 50 / 450 / 900 tiny kernels, with
the GPU kept busy so the launch never waits on a full queue; torch only, no staging. Writes $OUT/graph_launch.json.
(torch.profiler traces show ~1 ms cudaGraphLaunch events for the 8B draft/verify graphs: this checks whether that
is the launch or the profiler.)"""
import time, torch, json, os
torch.cuda.init()
res = {}
x = torch.zeros(4096, device="cuda")
big = torch.randn(8192, 8192, device="cuda")
for n in (50, 450, 900):
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3): x.add_(1.0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n):
            x.add_(1.0) if i % 2 else x.mul_(1.0001)
    torch.cuda.synchronize()
    for _ in range(5): g.replay()
    torch.cuda.synchronize()
    # host time per replay while the GPU is kept busy (launch not blocked by a full queue)
    host = []
    for _ in range(50):
        big @ big  # ~1 ms of GPU work ahead of the launch
        t = time.perf_counter(); g.replay(); host.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(20): g.replay()
    e1.record(); torch.cuda.synchronize()
    host.sort()
    res[n] = dict(host_us_median=1e6 * host[len(host)//2], host_us_min=1e6 * host[0], gpu_us_per_replay=1e3 * e0.elapsed_time(e1) / 20)
    print(n, res[n], flush=True)
json.dump(res, open(os.environ.get("OUT", "/tmp") + "/graph_launch.json", "w"), indent=1)
