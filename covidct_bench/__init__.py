"""covidct-bench: the COVID-CT study (Yang et al. 2020) as a reproducible, distributed benchmark.

Label convention everywhere in this package: **COVID = 1 (the positive class)**, non-COVID = 0.
(The upstream baselines use the opposite; see ``covidct_bench.data.covid_ct``.)
"""

__version__ = "0.1.0"

POSITIVE_CLASS = "covid"
LABELS = {0: "non_covid", 1: "covid"}
