# Read by ctest after the tests gtest_discover_tests found (TEST_INCLUDE_FILES,
# tests/CMakeLists.txt). A fresh checkout has no Testing/Temporary/
# CTestCostData.txt, so ctest -j would start tests in the order they are
# declared and the long ones could end the run alone on one core; a COST
# starts them first. (Release build: the crash-state test takes ~33 s, the
# other ~460 tests ~40 s together; under ASan all are several times slower.)
set_tests_properties(CrashTest.ThousandsOfStatesAcrossTheThreeModels PROPERTIES COST 1000)
