"""One-code aggregator (一码通): one QR for bus rides, the medical-insurance e-voucher and payment."""
