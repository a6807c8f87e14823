#pragma once
/// \file
/// The checks of the MPI test programs: each rank counts its failed checks, and the program's exit
/// code is 0 only when no rank failed one.

#include <mpi.h>

#include <iostream>
#include <string>

namespace ndif::mpitest {

/// This rank's failed checks, and where it stands in MPI_COMM_WORLD (set by `start`).
struct MpiChecks {
  int failures = 0;
  int rank = 0;
  int size = 1;

  /// Reads rank and size; MPI must be initialised.
  void start() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }

  void expect(bool ok, const std::string& what) {
    if (!ok) {
      ++failures;
      std::cerr << "rank " << rank << ": FAILED " << what << "\n";
    }
  }

  /// Collective: sums the failed checks of every rank, prints the verdict on rank 0 and returns
  /// the program's exit code.
  int finish() const {
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
      std::cout << (total == 0 ? "ok" : "FAILED") << ": " << size << " ranks, " << total
                << " failed checks\n";
    return total == 0 ? 0 : 1;
  }
};

}  // namespace ndif::mpitest
