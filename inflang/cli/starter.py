"""The commented starter study that `inflang init NAME` writes."""

from __future__ import annotations

TEMPLATE = """\
# yaml-language-server: $schema=study.schema.json
# {name}: how well does influence predict leave-one-out retraining? Edit, then:
#   inflang validate {name}.yaml && inflang plan {name}.yaml && inflang run {name}.yaml
# Every key is explained in docs/language.md; `inflang schema` prints them all with their defaults.
study: {name}
description: Exact influence vs leave-one-out for a small MLP on Iris
seed: 0                        # every random choice (split, init, batch order, selections) derives from it

dataset:
  name: iris                   # iris | digits | breast_cancer | wine | synthetic | mnist | cifar10 | ...
  test_size: 30                # an int (points) or a fraction in (0, 1)
  # your own data: name: custom, loader: "my_data:load" (a module beside this file), args: {{...}};
  # load(**args) returns (x, y): y integer class labels (float y trains a regression)

model:
  arch: mlp                    # logreg | mlp | cnn | lenet | vgg | resnet
  depth: 1
  width: 8
  activation: tanh
  # your own network: arch: custom, factory: "my_nets:make", args: {{...}};
  # make(input_shape, classes, **args) returns a torch.nn.Module mapping [b, *input_shape] to [b, classes]

training:
  optimizer: adam              # sgd | adam | lbfgs
  lr: 0.01
  epochs: 2000
  weight_decay: 0.01           # objective = mean loss + weight_decay / 2 * ||theta||^2
  dtype: float64

estimators:                    # exact | cg | lissa | arnoldi | kfac | ekfac | datainf | trak | tracin |
                               # representer | grad_dot | grad_cos
  - name: exact
    damping: 0.001             # (H + damping I)^-1
    negative: abs              # what to do with negative curvature: error | abs | clip
  # your own method: - {{name: custom, scorer: "my_methods:score", args: {{...}}, label: mine}};
  #   score(inputs, **args) returns [test points, training points] (docs/language.md, "Your own code")

test_points:
  select: highest_loss         # highest_loss | median_loss | random | misclassified | indices
  count: 3

ground_truth:
  protocol: loo                # loo | pbrf | group | lds | brittleness
  start: optimum               # optimum (warm start) | scratch
  steps: 1000
  removals:
    select: all                # all | top_k | random | percentile

metrics: [pearson, spearman]   # also kendall, sign_agreement, top_k_overlap

repeats: 3                     # seeds per cell: intervals over seeds need at least 2

sweep:                         # one cell per combination
  model.depth: [1, 2]

claims:                        # optional: hypotheses, each answered with a verdict and its interval
  - name: deeper is worse
    metric: spearman
    estimator: exact
    trend: {{axis: model.depth, direction: down}}
"""


def starter(name: str) -> str:
    return TEMPLATE.format(name=name)
