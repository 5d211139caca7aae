"""The building blocks of every network: the cell ops (`cell`), the mobile ops of the routing spaces
(`mobile`) and the hand-written autograd kernels the cell ops train with (`kernels`)."""
