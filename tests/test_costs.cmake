# Read by ctest after the tests gtest_discover_tests found (TEST_INCLUDE_FILES,
# tests/CMakeLists.txt). A fresh checkout has no Testing/Temporary/
# CTestCostData.txt, so ctest -j would start tests in the order they are
# declared and the long ones could end the run alone on one core; a COST
# starts them first. scripts/test.sh runs more tests at once than there are
# cores (most of the suite waits on fdatasync, in qemu-img and in our
# engine), so the run lasts about as long as its longest test, provided that
# test starts first. COST is in seconds as measured under ASan (-j6, a loaded
# 2-core machine); release times are ~60% of these.
foreach(_cost_test
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/create512=103"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/create512_journaled=84"
    "CrashTest.ThousandsOfStatesAcrossTheThreeModels=47"
    "CrashTest.RapidCheckStatefulRequestsAndCrashes=39"
    "Nbd.FioRandWriteVerifyAndQemuImgCheck=39"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/apply_journaled=31"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/create_journaled=30"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/extended_l2=30"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/compat010=28"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/refcount64=27"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/delete_extl2_journaled=27"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/delete_journaled=26"
    "CrashTest.ResizeThatGrowsTheL1TableSwitchesTheHeaderInOneWrite=26"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/refcount4_4k=23"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/compressed=21"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/cluster512=20"
    "Nbd.FioFourConnections=20"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/apply=19"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/default=19"
    "Images/SnapshotModel.InterleavedOpsMatchTheModel/compressed512=18"
    "CrashTest.JobsShareTheStatesAndAreDeterministic=17"
    "Nbd.QemuIoPatternsAndBlockStatus=17"
    "Nbd.IoUringDirect=16"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/create=16"
    "Nbd.ReadOnly=16"
    "Nbd.AdvertisedFlags=16"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/delete_extl2=14"
    "Ops/SnapshotCrash.EveryCrashStateIsSafe/delete=14"
    "EngineStressTest.ExtendedL2Backing=13"
    "EngineStressTest.StandardBacking=13"
    "SnapshotSyncs.BoundedAndIndependentOfTheMappedClusters=12"
    "EngineStressTest.ExtendedL2=12"
    "EngineStressTest.Standard=11"
    "CrashFaultTest.EnospcAtEveryPointExtendedL2Backing=11"
    "CrashTest.SnapshotsResizeAndCompressedWritesAtEveryCrashPoint=11"
    "SnapshotCrashReplay.CrashDuringTheReplayOfACreateIsSafe=10")
  string(REPLACE "=" ";" _cost_pair "${_cost_test}")
  list(GET _cost_pair 0 _cost_name)
  list(GET _cost_pair 1 _cost_seconds)
  # (ctest ignores a name that is no test: one renamed just loses its head start)
  set_tests_properties("${_cost_name}" PROPERTIES COST ${_cost_seconds})
endforeach()
