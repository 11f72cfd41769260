"""kfcn benchmarks: hardware peak, train step, predict, input pipeline and prepare (`make bench`)."""
