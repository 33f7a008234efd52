"""Variational Diffusion Models (Kingma et al. 2021): learned schedule, Fourier features, the
variational bound term by term, bits/dim. The paper's equations mapped to the code: docs/vdm.md."""

from guidediff.vdm.bound import (
    BoundTerms,
    bits_per_dim,
    diffusion_loss_continuous,
    diffusion_loss_discrete,
    gaussian_reconstruction_loss,
    prior_loss,
    reconstruction_loss,
    snr_ratio_minus_one,
    vlb_terms,
)
from guidediff.vdm.bpd import BpdResult, evaluate_bpd
from guidediff.vdm.fourier import FourierFeatures, VDMDenoiser, fourier_channels, fourier_features
from guidediff.vdm.config import VDMConfig, load_vdm_run_config
from guidediff.vdm.model import VDMModel, vdm_loss, vdm_unet_config
from guidediff.vdm.schedule import LearnedSchedule
from guidediff.vdm.variance import EstimatorVariance, bound_draws, estimator_variance, variance_optimal_schedule

__all__ = [
    "BoundTerms", "BpdResult", "EstimatorVariance", "bound_draws", "estimator_variance", "variance_optimal_schedule", "FourierFeatures", "LearnedSchedule", "VDMConfig", "VDMDenoiser", "VDMModel",
    "load_vdm_run_config",
    "bits_per_dim", "diffusion_loss_continuous", "diffusion_loss_discrete", "evaluate_bpd", "fourier_channels",
    "fourier_features", "gaussian_reconstruction_loss", "prior_loss", "reconstruction_loss",
    "snr_ratio_minus_one", "vdm_loss", "vdm_unet_config", "vlb_terms",
]
