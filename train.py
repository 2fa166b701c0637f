"""Train Fashion-MNIST CNNs: `python train.py` once, `python train.py -m lr=0.01,0.001` to sweep."""

from fmnist.main import main

if __name__ == "__main__":
    main()
