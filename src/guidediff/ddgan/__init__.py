"""Denoising diffusion GANs (Xiao, Kreis & Vahdat 2022): a few large denoising steps, each a
conditional GAN.

schedule.py   the paper's discrete VP schedule in log-SNR, the pair (x_{t-1}, x_t) and the posterior draw
generator.py  G(x_t, z, λ_t, c) -> x̂_0: ADM UNet with the latent in the adaptive GroupNorm; MLP for 2-D
discriminator.py  D(x_{t-1}, x_t, λ_t, c) -> logit, time-dependent, projection class conditioning
losses.py     non-saturating GAN losses and the R1 penalty
config.py     the run configuration (TOML + checked overrides), presets per dataset
train.py      the two-optimizer training loop, checkpoints, NaN guard
sample.py     load a trained generator, draw samples (T network evaluations per sample)
modes.py      mode coverage: 25-Gaussians and stacked Fashion-MNIST, KL to uniform
"""
