"""The gRPC face of the scheduler: conversion to and from the contract, servicers, errors."""
