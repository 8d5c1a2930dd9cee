"""The phases of bench/run.py and the measurement helpers every bench script shares.

Not an installed package: the scripts in bench/ import it from their own folder (Python puts
a script's folder on sys.path). Modules, in the order a run uses them:

    plan        paths, shared constants, BenchPlan (how much a mode measures)
    measure     timing in interleaved rounds, other processes' CPU share, the GEMM peak probes
    system      memory of this process (RSS, peak RSS), the machine, the software
    workload    video lengths and stand-in videos for throughput runs
    backends    the Spec table and opening every backend as a runtime Runner
    models      the timed and demo models, their exported graphs and TensorRT engines (cached)
    latency, throughput, memory, accuracy    the phases
    report      report.json's assembly, markdown, the chart, the headline line
    cli         what the commands parse alike (comma-separated integers)

bench/stream.py's phases, in the same way:

    stream_plan     its constants, StreamPlan, the models, the machine's other tenants
    stream_quality  a. accuracy on the demo test set, b. agreement with whole-video scores
    stream_live     c. latency per snippet and live capacity
    stream_cost     d. cost growth, a fresh process per point
    stream_report   report.md, the plots, report.json

bench/serve.py's (bench/ray_batch.py uses its workload, model and CPU split):

    serve_plan      its constants, the workload (XD-Violence test lengths) and the model
    cpu_share       CpuSplit: CPU seconds of this process, its Ray cluster by role, other tenants
    serve_load      the in-process passes, the client threads against the service, its deployment
    serve_report    the means over the rounds, the goal, report.md

Nothing here imports torch at module level: the memory helper process of an ONNX Runtime
backend must never load it.
"""
