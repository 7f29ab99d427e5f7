"""Datasets: Fashion-MNIST files and image folders."""
