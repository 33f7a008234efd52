"""Classifier guidance (Dhariwal & Nichol 2021, ADM): a noisy classifier p_φ(c | z_λ, λ) trained on
the diffusion model's noise levels, whose gradient ∇_z log p_φ(c | z_λ) guides any sampler.

- ``network``: the classifiers (``NoisyClassifier``, an ADM-style UNet encoder; ``NoisyMLPClassifier``
  for 2-D toys);
- ``training``: its loss closure for the one training loop, ``train_noisy_classifier``,
  accuracy against λ;
- ``loading``: ``load_noisy_classifier`` from a run or a .safetensors model (``check_label_set``, the
  label-set check, lives with the guidance method in ``guidance.methods.classifier``);
- ``gradient``: ``classifier_grad_log_prob`` (autograd), ``guide_accuracy``.

    clf, clf_config = load_noisy_classifier("runs/fmnist_noisy_classifier", device)
    check_label_set(clf.num_classes, model_config.model.num_classes, "runs/fmnist_noisy_classifier")
    grad = classifier_grad_log_prob(clf)
    guided = guidance.classifier_guidance(guidance.unconditional(net, 10), grad, scale=4.0)

The guidance formulas themselves (score and mean forms) are wrappers in ``guidance.wrappers``; the
registry entry that builds them from a checkpoint is ``guidance/methods/classifier.py``.
"""

from guidediff.classifier_guidance.gradient import classifier_grad_log_prob, guide_accuracy
from guidediff.classifier_guidance.loading import load_noisy_classifier
from guidediff.guidance.methods.classifier import check_label_set

__all__ = ["check_label_set", "classifier_grad_log_prob", "guide_accuracy", "load_noisy_classifier"]
